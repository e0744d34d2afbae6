//! The identity map, the unit of work, optimistic locking, transactions and savepoints.

use actor_orm::{Error, SessionState, TxState};

use crate::models::*;

#[tokio::test]
async fn identity_map_answers_a_repeated_get_without_a_round_trip() {
    let (_db, conn) = crate::connect("identity").await;
    create_schema(&conn).await;
    let mut s = SessionState::new();
    let ann = s.insert(&conn, User::new("ann", 30)).await.expect("insert");
    s.commit(&conn).await.expect("commit");

    let before = conn.round_trips();
    let first = s
        .get::<User>(&conn, ann.id)
        .await
        .expect("get")
        .expect("exists");
    let after_first = conn.round_trips();
    let second = s
        .get::<User>(&conn, ann.id)
        .await
        .expect("get")
        .expect("exists");
    let after_second = conn.round_trips();
    assert_eq!(first, second);
    // BEGIN + prepare + execute for the first; nothing for the second.
    assert!(after_first > before);
    assert_eq!(
        after_second, after_first,
        "the repeated get reached the server"
    );

    // get_many: hits cost nothing, misses come in one statement.
    let bob = s.insert(&conn, User::new("bob", 20)).await.expect("insert");
    s.commit(&conn).await.expect("commit");
    s.get::<User>(&conn, ann.id).await.expect("warm");
    conn.record_statements(true);
    let many = s
        .get_many::<User, _>(&conn, [bob.id, ann.id, 12345])
        .await
        .expect("get_many");
    assert_eq!(
        many.iter().map(|u| u.name.as_str()).collect::<Vec<_>>(),
        ["bob", "ann"]
    );
    let sent = conn.take_statements();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].contains(" IN ("), "{}", sent[0]);
}

#[tokio::test]
async fn a_dirty_update_writes_only_the_changed_columns() {
    let (_db, conn) = crate::connect("dirty").await;
    create_schema(&conn).await;
    let mut s = SessionState::new();
    let ann = s.insert(&conn, User::new("ann", 30)).await.expect("insert");
    s.commit(&conn).await.expect("commit");

    let loaded = s
        .get::<User>(&conn, ann.id)
        .await
        .expect("get")
        .expect("exists");
    conn.record_statements(true);
    // Unchanged: no statement at all.
    s.save(loaded.clone()).expect("save");
    s.flush(&conn).await.expect("flush");
    assert!(conn.take_statements().is_empty());

    let mut changed = loaded;
    changed.email = Some("ann@example.com".into());
    s.save(changed).expect("save");
    s.flush(&conn).await.expect("flush");
    let sent = conn.take_statements();
    insta::assert_snapshot!("dirty_update", sent.join("\n"));
    s.commit(&conn).await.expect("commit");
    let row = s
        .get::<User>(&conn, ann.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (row.email.as_deref(), row.age, row.name.as_str()),
        (Some("ann@example.com"), 30, "ann")
    );
}

#[tokio::test]
async fn flush_orders_parents_before_children_whatever_the_caller_did() {
    let (_db, conn) = crate::connect("fk_order").await;
    create_schema(&conn).await;
    let mut s = SessionState::new();
    let parent = User {
        id: 100,
        name: "parent".into(),
        email: None,
        age: 50,
    };
    let child = Post {
        id: 1,
        author_id: 100,
        title: "child".into(),
        created_at: None,
    };
    // Child first: a naive flush would violate the foreign key.
    s.add(child.clone()).expect("add child");
    s.add(parent.clone()).expect("add parent");
    conn.record_statements(true);
    s.commit(&conn).await.expect("flush in dependency order");
    let sent = conn.take_statements();
    let users_at = sent
        .iter()
        .position(|q| q.contains("INSERT INTO \"users\""))
        .expect("users insert");
    let posts_at = sent
        .iter()
        .position(|q| q.contains("INSERT INTO \"posts\""))
        .expect("posts insert");
    assert!(users_at < posts_at, "{sent:?}");

    // Deleting parent first: children go first.
    let p = s
        .get::<User>(&conn, 100i64)
        .await
        .expect("get")
        .expect("exists");
    let c = s
        .get::<Post>(&conn, 1i64)
        .await
        .expect("get")
        .expect("exists");
    s.delete(&p).expect("delete parent");
    s.delete(&c).expect("delete child");
    s.commit(&conn).await.expect("delete in dependency order");
    assert_eq!(s.count(&conn, &User::query()).await.expect("count"), 0);
}

#[tokio::test]
async fn queries_autoflush_pending_changes() {
    let (_db, conn) = crate::connect("autoflush").await;
    create_schema(&conn).await;
    let mut s = SessionState::new();
    s.add(User::new("pending", 1)).expect("add");
    assert_eq!(s.pending(), 1);
    let found = s
        .all(&conn, User::query().filter(User::NAME.eq("pending")))
        .await
        .expect("query");
    assert_eq!(found.len(), 1);
    assert_eq!(s.pending(), 0);
    // Rolled back: nothing committed that the caller did not commit.
    s.rollback(&conn).await.expect("rollback");
    assert_eq!(s.count(&conn, &User::query()).await.expect("count"), 0);
}

#[tokio::test]
async fn optimistic_lock_conflict_between_two_connections_is_detected() {
    let (db, conn_a) = crate::connect("optimistic").await;
    create_schema(&conn_a).await;
    let conn_b = crate::connect_again(&db).await;
    let mut a = SessionState::new();
    let mut b = SessionState::new();
    a.insert(
        &conn_a,
        Account {
            id: 1,
            balance: 100,
            version: 1,
        },
    )
    .await
    .expect("insert");
    a.commit(&conn_a).await.expect("commit");

    let mut seen_by_a = a
        .get::<Account>(&conn_a, 1i64)
        .await
        .expect("get")
        .expect("exists");
    let mut seen_by_b = b
        .get::<Account>(&conn_b, 1i64)
        .await
        .expect("get")
        .expect("exists");
    seen_by_b.balance += 50;
    b.save(seen_by_b).expect("save");
    b.commit(&conn_b).await.expect("b wins");

    seen_by_a.balance -= 30;
    a.save(seen_by_a).expect("save");
    let err = a.commit(&conn_a).await.expect_err("a is stale");
    match err {
        Error::Stale {
            table,
            expected_version,
            ..
        } => {
            assert_eq!(table, "accounts");
            assert_eq!(expected_version, Some(1));
        }
        other => panic!("expected a stale-object error, got {other:?}"),
    }
    a.rollback(&conn_a).await.expect("rollback");
    let row = a
        .get::<Account>(&conn_a, 1i64)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (row.balance, row.version),
        (150, 2),
        "only b's change was written"
    );
}

#[tokio::test]
async fn savepoints_undo_part_of_a_transaction() {
    let (_db, conn) = crate::connect("savepoints").await;
    create_schema(&conn).await;
    let mut s = SessionState::new();
    s.insert(&conn, User::new("kept", 1)).await.expect("insert");
    let sp = s.savepoint(&conn).await.expect("savepoint");
    s.insert(&conn, User::new("undone", 2))
        .await
        .expect("insert");
    // A failure inside the savepoint aborts the transaction…
    let err = s
        .insert(&conn, User::new("kept", 3))
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Some("23505"));
    assert_eq!(s.tx_state(), TxState::Failed);
    // …and rolling back to the savepoint recovers it.
    s.rollback_to(&conn, sp).await.expect("rollback to");
    assert_eq!(s.tx_state(), TxState::Active);
    let sp2 = s.savepoint(&conn).await.expect("savepoint");
    s.insert(&conn, User::new("released", 4))
        .await
        .expect("insert");
    s.release(&conn, sp2).await.expect("release");
    s.commit(&conn).await.expect("commit");
    let mut names: Vec<String> = s
        .all(&conn, User::query())
        .await
        .expect("all")
        .into_iter()
        .map(|u| u.name)
        .collect();
    names.sort();
    assert_eq!(names, ["kept", "released"]);
}

#[tokio::test]
async fn commit_of_an_aborted_transaction_rolls_back_and_says_so() {
    let (_db, conn) = crate::connect("aborted").await;
    create_schema(&conn).await;
    let mut s = SessionState::new();
    s.insert(&conn, User::new("lost", 1)).await.expect("insert");
    s.raw_rows(&conn, "SELECT 1/0", vec![])
        .await
        .expect_err("division by zero");
    let err = s.commit(&conn).await.expect_err("cannot commit");
    assert!(matches!(err, Error::TransactionAborted), "{err:?}");
    assert_eq!(s.tx_state(), TxState::Idle);
    assert_eq!(
        s.count(&conn, &User::query()).await.expect("count"),
        0,
        "nothing committed"
    );
}

/// A composite primary key, a table in its own schema, and a skipped field.
#[derive(actor_orm::Model, Clone, Debug, PartialEq)]
#[orm(table_name = "memberships", schema = "club")]
struct Membership {
    #[orm(primary_key)]
    club_id: i32,
    #[orm(primary_key, column_name = "member")]
    member_name: String,
    role: String,
    #[orm(skip)]
    scratch: Option<String>,
}

#[tokio::test]
async fn composite_keys_schemas_and_skipped_fields() {
    let (_db, conn) = crate::connect("composite").await;
    conn.batch("CREATE SCHEMA club").await.expect("schema");
    conn.batch(&actor_orm::ddl::create_table::<Membership>())
        .await
        .expect("create");
    let mut s = SessionState::new();
    for (club, who, role) in [
        (1, "ann", "chair"),
        (1, "bob", "member"),
        (2, "ann", "member"),
    ] {
        s.add(Membership {
            club_id: club,
            member_name: who.into(),
            role: role.into(),
            scratch: Some("not stored".into()),
        })
        .expect("add");
    }
    s.commit(&conn).await.expect("commit");

    let m = s
        .get::<Membership>(&conn, (1i32, "ann".to_string()))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (m.role.as_str(), m.scratch),
        ("chair", None),
        "skipped fields come back as Default"
    );
    let again = s
        .get::<Membership>(&conn, (2i32, "ann".to_string()))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(again.role, "member");
    let many = s
        .get_many::<Membership, _>(
            &conn,
            [
                (1i32, "bob".to_string()),
                (9i32, "zed".to_string()),
                (1i32, "ann".to_string()),
            ],
        )
        .await
        .expect("get_many");
    assert_eq!(
        many.iter()
            .map(|m| m.member_name.as_str())
            .collect::<Vec<_>>(),
        ["bob", "ann"]
    );

    let mut bob = many[0].clone();
    bob.role = "treasurer".into();
    conn.record_statements(true);
    s.save(bob).expect("save");
    s.delete(&again).expect("delete");
    s.commit(&conn).await.expect("commit");
    let sent = conn.take_statements();
    assert!(sent.iter().any(|q| q.starts_with("UPDATE \"club\".\"memberships\" SET \"role\" = $1 WHERE \"club_id\" = $2 AND \"member\" = $3")), "{sent:?}");
    let rows = s
        .raw_rows(
            &conn,
            "SELECT club_id, member, role FROM club.memberships ORDER BY club_id, member",
            vec![],
        )
        .await
        .expect("raw");
    let seen: Vec<(i32, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        seen,
        vec![
            (1, "ann".into(), "chair".into()),
            (1, "bob".into(), "treasurer".into())
        ]
    );
}

/// A large result keeps the rows themselves as snapshots; dirty checking and identity hits work
/// on them exactly as on copies.
#[tokio::test]
async fn a_large_result_is_tracked_like_a_small_one() {
    let (_db, conn) = crate::connect("identity_large").await;
    create_schema(&conn).await;
    let mut s = SessionState::new();
    s.add_all((0..200).map(|i| User::new(&format!("u{i}"), i)).collect())
        .expect("add");
    s.commit(&conn).await.expect("commit");

    let loaded = s
        .all(&conn, User::query().order_by(User::ID.asc()))
        .await
        .expect("load 200");
    assert_eq!(loaded.len(), 200);
    assert_eq!(s.identity_map().len(), 200);
    // An identity hit: no round trip, the same values.
    let before = conn.round_trips();
    let hit = s.get::<User>(&conn, loaded[10].id).await.expect("get");
    assert_eq!(hit.as_ref(), Some(&loaded[10]));
    assert_eq!(conn.round_trips(), before);

    // Saving every row with one of them changed sends one UPDATE of that one column.
    conn.record_statements(true);
    for (i, mut u) in loaded.into_iter().enumerate() {
        if i == 7 {
            u.email = Some("seven@example.com".into());
        }
        s.save(u).expect("save");
    }
    s.flush(&conn).await.expect("flush");
    let sent = conn.take_statements();
    assert_eq!(
        sent,
        vec![
            r#"UPDATE "users" SET "email" = $1 WHERE "id" = $2 AND ("email" IS NOT DISTINCT FROM $3) RETURNING "id", "name", "email", "age""#
                .to_owned()
        ]
    );
    s.commit(&conn).await.expect("commit");
    let seven = s
        .all(&conn, User::query().filter(User::EMAIL.is_not_null()))
        .await
        .expect("read");
    assert_eq!(seven.len(), 1);
    assert_eq!(seven[0].name, "u7");
}

/// A large result is indexed only when the session next looks a row up, yet every load still
/// counts in the order it happened: the newest load of a key is its snapshot, whether it came in
/// a large result or a small one, and a deleted row is gone.
#[tokio::test]
async fn the_newest_load_of_a_row_is_its_snapshot() {
    let (db, conn) = crate::connect("identity_order").await;
    create_schema(&conn).await;
    let other = crate::connect_again(&db).await;
    let mut s = SessionState::new();
    s.add_all((0..100).map(|i| User::new(&format!("u{i}"), i)).collect())
        .expect("add");
    s.commit(&conn).await.expect("commit");
    let set_age = async |age: i32| {
        other
            .client()
            .execute("UPDATE users SET age = $1 WHERE name = 'u5'", &[&age])
            .await
            .expect("update from another connection");
    };

    // A large load, a small load of one of its rows, then a large load again, each seeing a
    // newer committed age (READ COMMITTED: every statement sees what was committed before it).
    let all = s.all(&conn, User::query()).await.expect("load 100");
    let u5 = all.iter().find(|u| u.name == "u5").expect("u5").id;
    set_age(1000).await;
    let small = s
        .all(&conn, User::query().filter(User::NAME.eq("u5")))
        .await
        .expect("load one");
    assert_eq!(small[0].age, 1000);
    assert_eq!(s.identity_map().len(), 100);
    let before = conn.round_trips();
    let hit = s
        .get::<User>(&conn, u5)
        .await
        .expect("get")
        .expect("loaded");
    assert_eq!(hit.age, 1000, "the small load is newer than the large one");
    assert_eq!(conn.round_trips(), before, "an identity hit");

    set_age(2000).await;
    s.all(&conn, User::query()).await.expect("load 100 again");
    let before = conn.round_trips();
    let hit = s
        .get::<User>(&conn, u5)
        .await
        .expect("get")
        .expect("loaded");
    assert_eq!(
        hit.age, 2000,
        "the second large load is newer than the small one"
    );
    assert_eq!(conn.round_trips(), before, "an identity hit");
    assert_eq!(s.identity_map().len(), 100);

    // Saving it unchanged writes nothing: the snapshot is the newest load, not the first.
    conn.record_statements(true);
    s.save(hit.clone()).expect("save");
    s.flush(&conn).await.expect("flush");
    assert_eq!(conn.take_statements(), Vec::<String>::new());

    // A deleted row leaves the map: the next get asks the database and finds nothing.
    s.delete(&hit).expect("delete");
    s.flush(&conn).await.expect("flush delete");
    let before = conn.round_trips();
    assert_eq!(s.get::<User>(&conn, u5).await.expect("get"), None);
    assert!(conn.round_trips() > before, "a miss reaches the server");
    assert_eq!(s.identity_map().len(), 99);
    s.commit(&conn).await.expect("commit");
    assert!(s.identity_map().is_empty());
}

/// A commit whose pending work is only inserts sends them with the COMMIT behind them: all of
/// them land, or (when one fails) none does, and the session goes on.
#[tokio::test]
async fn a_commit_of_inserts_alone_is_all_or_nothing() {
    let (db, conn) = crate::connect("commit_inserts").await;
    if crate::direct_only(
        &db,
        "pins the SQL of prepared mode (a batch insert as one array per column); unnamed statements send VALUES lists",
    ) {
        return;
    }
    create_schema(&conn).await;
    let mut s = SessionState::new();
    s.insert(&conn, User::new("ann", 30)).await.expect("insert");
    s.add_all(vec![User::new("bob", 1), User::new("cid", 2)])
        .expect("add");
    conn.record_statements(true);
    s.commit(&conn).await.expect("commit");
    let sent = conn.take_statements();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent[0].starts_with("INSERT") && !sent[0].contains("RETURNING"));
    assert_eq!(sent[1], "COMMIT");

    // The second insert breaks the unique name: the first is rolled back with it.
    s.begin(&conn).await.expect("begin");
    s.add(User::new("dan", 3)).expect("add");
    s.add_without_returning(vec![User::new("ann", 4)])
        .expect("add");
    let err = s.commit(&conn).await.expect_err("duplicate name");
    assert_eq!(err.code(), Some("23505"));
    assert_eq!(s.tx_state(), TxState::Idle);
    assert_eq!(s.pending(), 0);
    let names: Vec<String> = s
        .all(&conn, User::query().order_by(User::NAME.asc()))
        .await
        .expect("read")
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, ["ann", "bob", "cid"]);
    s.add(User::new("eve", 5)).expect("add");
    s.commit(&conn).await.expect("the session goes on");
}

#[derive(actor_orm::Model, Clone, Debug)]
#[orm(table_name = "narrow")]
struct Narrow {
    #[orm(primary_key)]
    id: i64,
    /// An `integer` column read into an i64: a value over 2^31 is refused when bound.
    n: i64,
}

/// A value refused on the client while the INSERTs and COMMIT are pipelined must not let the
/// COMMIT go alone: nothing of the transaction is committed.
#[tokio::test]
async fn a_value_refused_in_a_pipelined_commit_commits_nothing() {
    let (db, conn) = crate::connect("commit_refused").await;
    if crate::direct_only(
        &db,
        "pins the client-side check of a value against the parameter type a prepared statement declares; unnamed statements (behind a pooler) leave that check to the server (22003/23514/42804)",
    ) {
        return;
    }
    create_schema(&conn).await;
    conn.batch("CREATE TABLE narrow (id bigint PRIMARY KEY, n integer NOT NULL)")
        .await
        .expect("table");
    let mut s = SessionState::new();
    s.insert(&conn, User::new("ann", 30)).await.expect("insert");
    s.add(Narrow {
        id: 1,
        n: 3_000_000_000,
    })
    .expect("add: the model's own type allows it");
    match s.commit(&conn).await.expect_err("out of range for integer") {
        Error::TypeMismatch { column, .. } => assert_eq!(column, "n"),
        other => panic!("expected TypeMismatch, got {other:?}"),
    }
    s.rollback(&conn).await.expect("rollback");
    let mut check = SessionState::new();
    assert!(
        check
            .all(&conn, User::query())
            .await
            .expect("read")
            .is_empty(),
        "ann was committed without the refused row"
    );
}
