//! The select builder against real rows, and the SQL of each builder feature pinned.

use actor_orm::sea_query::Value;
use actor_orm::{
    DeleteWhere, Error, Filter, Model as _, OnConflict, SessionState, UpdateWhere, count_all, ddl,
};

use crate::models::*;

async fn seeded(
    hint: &str,
) -> (
    actor_orm::testing::TestDatabase,
    actor_orm::Connection,
    SessionState,
) {
    let (db, conn) = crate::connect(hint).await;
    create_schema(&conn).await;
    let mut s = SessionState::new();
    for (name, age, email) in [
        ("ann", 31, Some("ann@example.com")),
        ("bob", 25, None),
        ("cat", 40, Some("cat@example.org")),
        ("Dan", 25, None),
    ] {
        let mut u = User::new(name, age);
        u.email = email.map(str::to_owned);
        s.add(u).expect("add");
    }
    s.commit(&conn).await.expect("seed");
    (db, conn, s)
}

fn names(users: &[User]) -> Vec<&str> {
    users.iter().map(|u| u.name.as_str()).collect()
}

#[tokio::test]
async fn filters_return_the_right_rows() {
    let (_db, conn, mut s) = seeded("filters").await;
    // Ordered by key: a name order would depend on the server's collation ("Dan" sorts before
    // "bob" only under C).
    let q = |f: Filter| User::query().filter(f).order_by(User::ID.asc());
    assert_eq!(
        names(&s.all(&conn, q(User::AGE.eq(25))).await.expect("eq")),
        ["bob", "Dan"]
    );
    assert_eq!(
        names(&s.all(&conn, q(User::AGE.ne(25))).await.expect("ne")),
        ["ann", "cat"]
    );
    assert_eq!(
        names(
            &s.all(&conn, q(User::AGE.gt(30).and(User::AGE.lt(40))))
                .await
                .expect("and")
        ),
        ["ann"]
    );
    assert_eq!(
        names(
            &s.all(&conn, q(User::AGE.ge(40).or(User::NAME.eq("bob"))))
                .await
                .expect("or")
        ),
        ["bob", "cat"]
    );
    assert_eq!(
        names(&s.all(&conn, q(User::AGE.eq(25).not())).await.expect("not")),
        ["ann", "cat"]
    );
    assert_eq!(
        names(
            &s.all(&conn, q(User::NAME.is_in(["ann", "cat", "zed"])))
                .await
                .expect("in")
        ),
        ["ann", "cat"]
    );
    assert_eq!(
        names(
            &s.all(&conn, q(User::NAME.not_in(["ann", "cat"])))
                .await
                .expect("not in")
        ),
        ["bob", "Dan"]
    );
    assert!(
        s.all(&conn, q(User::NAME.is_in(Vec::<&str>::new())))
            .await
            .expect("empty in")
            .is_empty()
    );
    assert_eq!(
        names(
            &s.all(&conn, q(User::EMAIL.like("%@example.com")))
                .await
                .expect("like")
        ),
        ["ann"]
    );
    assert_eq!(
        names(
            &s.all(&conn, q(User::NAME.ilike("d%")))
                .await
                .expect("ilike")
        ),
        ["Dan"]
    );
    assert_eq!(
        names(&s.all(&conn, q(User::EMAIL.is_null())).await.expect("null")),
        ["bob", "Dan"]
    );
    assert_eq!(
        names(
            &s.all(&conn, q(User::EMAIL.is_not_null()))
                .await
                .expect("not null")
        ),
        ["ann", "cat"]
    );
    assert_eq!(
        names(
            &s.all(&conn, q(User::AGE.between(25, 31)))
                .await
                .expect("between")
        ),
        ["ann", "bob", "Dan"]
    );
    assert_eq!(
        names(
            &s.all(&conn, q(Filter::any([])).order_by(User::AGE.asc()))
                .await
                .expect("any")
        ),
        Vec::<&str>::new()
    );
}

#[tokio::test]
async fn order_limit_offset_count_exists() {
    let (_db, conn, mut s) = seeded("paging").await;
    let page = User::query()
        .order_by(User::AGE.desc())
        .order_by(User::ID.asc())
        .limit(2)
        .offset(1);
    assert_eq!(
        names(&s.all(&conn, page).await.expect("page")),
        ["ann", "bob"]
    );
    assert_eq!(
        s.count(&conn, &User::query().filter(User::AGE.eq(25)))
            .await
            .expect("count"),
        2
    );
    assert!(
        s.exists(&conn, &User::query().filter(User::NAME.eq("cat")))
            .await
            .expect("exists")
    );
    assert!(
        !s.exists(&conn, &User::query().filter(User::NAME.eq("zed")))
            .await
            .expect("exists")
    );
    let first = s
        .first(
            &conn,
            User::query()
                .order_by(User::AGE.asc())
                .order_by(User::ID.desc()),
        )
        .await
        .expect("first");
    assert_eq!(first.map(|u| u.name), Some("Dan".into()));
}

#[tokio::test]
async fn aggregates_projections_and_joins() {
    let (_db, conn, mut s) = seeded("aggregates").await;
    // Tuples of columns.
    let pairs = s
        .project(
            &conn,
            User::query()
                .order_by(User::ID.asc())
                .select((User::NAME, User::EMAIL)),
        )
        .await
        .expect("tuples");
    assert_eq!(
        pairs[0],
        ("ann".to_string(), Some("ann@example.com".to_string()))
    );
    assert_eq!(pairs[1], ("bob".to_string(), None));
    // Group by with having.
    let by_age = s
        .project(
            &conn,
            User::query()
                .select((User::AGE, count_all()))
                .group_by(User::AGE)
                .having(count_all().gt(1i64))
                .order_by(User::AGE.asc()),
        )
        .await
        .expect("group by");
    assert_eq!(by_age, vec![(25, 2)]);
    let stats = s
        .project(
            &conn,
            User::query().select((
                User::AGE.max(),
                User::AGE.min(),
                User::AGE.sum_i64(),
                User::AGE.avg_f64(),
            )),
        )
        .await
        .expect("aggregates");
    assert_eq!(stats, vec![(Some(40), Some(25), Some(121), Some(30.25))]);
    let none = s
        .project(
            &conn,
            User::query()
                .filter(User::AGE.gt(100))
                .select(User::AGE.max()),
        )
        .await
        .expect("max of nothing");
    assert_eq!(none, vec![None]);

    // Joins.
    let ann = s
        .first(&conn, User::query().filter(User::NAME.eq("ann")))
        .await
        .expect("ann")
        .expect("exists");
    let bob = s
        .first(&conn, User::query().filter(User::NAME.eq("bob")))
        .await
        .expect("bob")
        .expect("exists");
    for (id, title) in [(1, "first"), (2, "second")] {
        s.add(Post {
            id,
            author_id: ann.id,
            title: title.into(),
            created_at: None,
        })
        .expect("add");
    }
    let authors = s
        .all(
            &conn,
            User::query()
                .inner_join::<Post>(Post::AUTHOR_ID.eq_col(User::ID))
                .filter(Post::TITLE.eq("second")),
        )
        .await
        .expect("inner join");
    assert_eq!(names(&authors), ["ann"]);
    let pairs = s
        .all_pairs(
            &conn,
            User::query()
                .left_join::<Post>(Post::AUTHOR_ID.eq_col(User::ID))
                .filter(User::ID.is_in([ann.id, bob.id]))
                .order_by(User::NAME.asc())
                .order_by(Post::ID.asc())
                .with::<Post>(),
        )
        .await
        .expect("left join pairs");
    let shape: Vec<(&str, Option<&str>)> = pairs
        .iter()
        .map(|(u, p)| (u.name.as_str(), p.as_ref().map(|p| p.title.as_str())))
        .collect();
    assert_eq!(
        shape,
        vec![
            ("ann", Some("first")),
            ("ann", Some("second")),
            ("bob", None)
        ]
    );
    // The database default was read back.
    assert!(pairs[0].1.as_ref().and_then(|p| p.created_at).is_some());
}

#[tokio::test]
async fn inserts_updates_deletes_and_upserts() {
    let (db, conn, mut s) = seeded("writes").await;
    if crate::direct_only(
        &db,
        "pins the SQL of prepared mode (a batch insert as one array per column); unnamed statements send VALUES lists",
    ) {
        return;
    }
    // Multi-row insert: generated keys and defaults come back.
    for i in 0..3 {
        s.add(User::new(&format!("bulk{i}"), 50 + i)).expect("add");
    }
    s.flush(&conn).await.expect("flush");
    let bulk = s
        .all(
            &conn,
            User::query()
                .filter(User::NAME.like("bulk%"))
                .order_by(User::ID.asc()),
        )
        .await
        .expect("bulk");
    assert_eq!(bulk.len(), 3);
    assert!(bulk.windows(2).all(|w| w[0].id < w[1].id) && bulk[0].id > 0);

    // Update and delete by filter.
    let n = s
        .update_where(
            &conn,
            UpdateWhere::<User>::default()
                .set(User::AGE, 1)
                .filter(User::NAME.like("bulk%")),
        )
        .await
        .expect("update where");
    assert_eq!(n, 3);
    assert_eq!(
        s.count(&conn, &User::query().filter(User::AGE.eq(1)))
            .await
            .expect("count"),
        3
    );
    let n = s
        .delete_where(&conn, DeleteWhere::<User>::new(User::AGE.eq(1)))
        .await
        .expect("delete where");
    assert_eq!(n, 3);

    // Update and delete by key.
    let mut bob = s
        .first(&conn, User::query().filter(User::NAME.eq("bob")))
        .await
        .expect("bob")
        .expect("exists");
    bob.age = 26;
    s.save(bob.clone()).expect("save");
    s.flush(&conn).await.expect("flush");
    assert_eq!(
        s.get::<User>(&conn, bob.id)
            .await
            .expect("get")
            .map(|u| u.age),
        Some(26)
    );
    s.delete(&bob).expect("delete");
    s.commit(&conn).await.expect("commit");
    assert_eq!(s.get::<User>(&conn, bob.id).await.expect("get"), None);
    // Deleting it again: the row is gone.
    s.delete(&bob).expect("queue");
    let err = s.flush(&conn).await.expect_err("gone");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    s.rollback(&conn).await.expect("rollback");

    // Upsert: insert, then update on conflict, then do nothing.
    let acct = Account {
        id: 7,
        balance: 10,
        version: 1,
    };
    assert_eq!(
        s.upsert(&conn, acct.clone(), OnConflict::UpdateAll)
            .await
            .expect("insert")
            .map(|a| a.balance),
        Some(10)
    );
    let newer = Account {
        balance: 20,
        ..acct.clone()
    };
    assert_eq!(
        s.upsert(&conn, newer, OnConflict::UpdateAll)
            .await
            .expect("update")
            .map(|a| a.balance),
        Some(20)
    );
    let ignored = Account {
        balance: 99,
        ..acct
    };
    assert_eq!(
        s.upsert(&conn, ignored, OnConflict::DoNothing)
            .await
            .expect("nothing"),
        None
    );
    s.commit(&conn).await.expect("commit");
    let stored = s
        .get::<Account>(&conn, 7i64)
        .await
        .expect("get")
        .expect("exists");
    // The overwrite bumped the optimistic-lock version instead of taking the caller's.
    assert_eq!((stored.balance, stored.version), (20, 2));

    // The SQL of a multi-row insert, an upsert and exists, pinned.
    conn.record_statements(true);
    s.add(User::new("p1", 1)).expect("add");
    s.add(User::new("p2", 2)).expect("add");
    s.flush(&conn).await.expect("flush");
    s.upsert(
        &conn,
        Account {
            id: 8,
            balance: 1,
            version: 1,
        },
        OnConflict::UpdateAll,
    )
    .await
    .expect("upsert");
    s.upsert(
        &conn,
        Account {
            id: 8,
            balance: 1,
            version: 1,
        },
        OnConflict::DoNothing,
    )
    .await
    .expect("upsert");
    s.exists(&conn, &User::query().filter(User::AGE.eq(1)))
        .await
        .expect("exists");
    insta::assert_snapshot!("insert_upsert_exists", conn.take_statements().join("\n"));
    s.rollback(&conn).await.expect("rollback");

    // A unique violation is a database error with its SQLSTATE and constraint.
    let err = s
        .insert(&conn, User::new("ann", 1))
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Some("23505"));
    assert_eq!(
        err.as_db_error().and_then(|d| d.constraint.as_deref()),
        Some("users_name_key")
    );
    // The transaction is now aborted, as in PostgreSQL, until rolled back.
    assert!(matches!(
        s.count(&conn, &User::query()).await,
        Err(Error::TransactionAborted)
    ));
    s.rollback(&conn).await.expect("rollback");
    assert_eq!(s.count(&conn, &User::query()).await.expect("count"), 3);
}

#[tokio::test]
async fn raw_sql_binds_parameters_and_maps_models() {
    let (_db, conn, mut s) = seeded("raw").await;
    let users: Vec<User> = s
        .raw(
            &conn,
            "SELECT age, email, name, id FROM users WHERE age > $1 AND name <> $2 ORDER BY name",
            vec![Value::Int(Some(26)), Value::String(Some("cat".into()))],
        )
        .await
        .expect("raw");
    assert_eq!(names(&users), ["ann"]);
    let n = s
        .raw_execute(
            &conn,
            "UPDATE users SET age = age + $1 WHERE name = $2",
            vec![Value::Int(Some(1)), Value::String(Some("ann".into()))],
        )
        .await
        .expect("exec");
    assert_eq!(n, 1);
}

#[test]
fn builder_sql_is_pinned() {
    let q = User::query()
        .filter(
            User::NAME
                .eq("x")
                .and(User::AGE.between(1, 2).or(User::EMAIL.is_null().not())),
        )
        .filter(User::NAME.is_in(["a", "b"]))
        .filter(User::EMAIL.ilike("%x%"))
        .order_by(User::AGE.desc())
        .limit(10)
        .offset(20);
    let (sql, values) = q.build();
    insta::assert_snapshot!("select_filters", format!("{sql}\n{:?}", values.0.len()));
    insta::assert_snapshot!(
        "select_count",
        q.count_statement()
            .build(actor_orm::sea_query::PostgresQueryBuilder)
            .0
    );
    let join = User::query()
        .left_join::<Post>(Post::AUTHOR_ID.eq_col(User::ID))
        .with::<Post>();
    insta::assert_snapshot!("select_join_pair", join.build().0);
    let agg = User::query()
        .select((User::AGE, count_all()))
        .group_by(User::AGE)
        .having(count_all().gt(1i64));
    insta::assert_snapshot!("select_group_by", agg.build().0);
    let upd = UpdateWhere::<User>::default()
        .set(User::AGE, 3)
        .filter(User::NAME.eq("x"))
        .build()
        .expect("build");
    insta::assert_snapshot!("update_where", upd.0);
    insta::assert_snapshot!(
        "delete_where",
        DeleteWhere::<User>::new(User::AGE.lt(3)).build().0
    );
    insta::assert_snapshot!("ddl_post", ddl::create_table::<Post>());
    insta::assert_snapshot!("ddl_account", ddl::create_table::<Account>());
    insta::assert_snapshot!("ddl_enum", ddl::create_enum::<Mood>().expect("pg enum"));
    assert_eq!(User::meta().table, "users");
}
