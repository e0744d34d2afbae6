//! Bad input through sessions: hostile strings are data, bad values are typed errors that leave
//! the session usable and commit nothing partial, and connection settings never leak a password.

use std::time::Duration;

use actor_orm::sea_query::{Expr, Value};
use actor_orm::{Error, Model, Pool, Session, TxState, ddl};

use crate::models::*;

/// SQL's `LIKE`: `%` any run, `_` any one character, `\` escapes the next.
fn like(text: &str, pattern: &str) -> bool {
    fn go(t: &[char], p: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('%', rest)) => (0..=t.len()).any(|k| go(&t[k..], rest)),
            Some(('_', rest)) => !t.is_empty() && go(&t[1..], rest),
            Some(('\\', rest)) if !rest.is_empty() => {
                t.first() == rest.first() && go(&t[1..], &rest[1..])
            }
            Some((c, rest)) => t.first() == Some(c) && go(&t[1..], rest),
        }
    }
    let (t, p): (Vec<char>, Vec<char>) = (text.chars().collect(), pattern.chars().collect());
    go(&t, &p)
}

const HOSTILE: &[&str] = &[
    "'; DROP TABLE users; --",
    "\" OR 1=1 --",
    "ann' OR 'a'='a",
    "$1",
    "%' OR name LIKE '%",
    "\\'; SELECT pg_sleep(10); --",
    "ann\u{2019}s caf\u{e9} \u{1F600}",
];

/// Identifiers come from models and are always quoted, however odd.
#[derive(Model, Clone, Debug, PartialEq)]
#[orm(table_name = "odd \"table\"; DROP TABLE users")]
struct Odd {
    #[orm(primary_key, column_name = "select")]
    id: i64,
    #[orm(column_name = "we\"ird col")]
    value: String,
}

#[derive(Model, Clone, Debug, PartialEq)]
#[orm(table_name = "amounts")]
struct Amount {
    #[orm(primary_key)]
    id: i64,
    at: chrono::NaiveDateTime,
}

async fn setup(hint: &str) -> (actor_orm::testing::TestDatabase, Pool, Session) {
    let (db, conn) = crate::connect(hint).await;
    create_schema(&conn).await;
    conn.batch(&ddl::create_table::<Odd>()).await.expect("odd");
    conn.batch(&ddl::create_table::<Amount>())
        .await
        .expect("amounts");
    let pool = crate::pool_on(&db, |b| b.max_size(2)).await;
    let s = pool.session().await.expect("session");
    (db, pool, s)
}

#[tokio::test]
async fn hostile_strings_are_data_in_every_value_position() {
    let (_db, _pool, s) = setup("bad_hostile").await;
    for (i, text) in HOSTILE.iter().enumerate() {
        let stored = s
            .insert(User::new(text, i as i32))
            .await
            .expect("insert as data");
        assert_eq!(stored.name, *text);
        // In a filter, a LIKE pattern, a key, an UPDATE … SET and raw SQL parameters.
        let by_eq = s
            .all(User::query().filter(User::NAME.eq(*text)))
            .await
            .expect("eq");
        assert_eq!(by_eq.len(), 1, "{text}");
        let by_like = s
            .count(User::query().filter(User::NAME.like(text)))
            .await
            .expect("like");
        // As a pattern the text is data too: exactly the stored names it matches under LIKE's
        // rules (`%`, `_`, `\` escapes), computed here.
        let expected = HOSTILE[..=i].iter().filter(|n| like(n, text)).count();
        assert_eq!(by_like, expected as i64, "{text}");
        let updated = s
            .update_where(
                actor_orm::UpdateWhere::<User>::default()
                    .set(User::EMAIL, Some(text.to_string()))
                    .filter(User::ID.eq(stored.id)),
            )
            .await
            .expect("update");
        assert_eq!(updated, 1);
        let raw = s
            .raw::<User>(
                "SELECT * FROM users WHERE name = $1 AND email = $2",
                vec![Value::from(*text), Value::from(*text)],
            )
            .await
            .expect("raw");
        assert_eq!(raw.len(), 1, "{text}");
        let odd = s
            .insert(Odd {
                id: i as i64 + 1,
                value: text.to_string(),
            })
            .await
            .expect("odd identifiers");
        assert_eq!(
            s.get::<Odd>(odd.id).await.expect("get").map(|o| o.value),
            Some(text.to_string())
        );
    }
    s.commit().await.expect("commit");
    assert_eq!(
        s.count(User::query()).await.expect("users still there"),
        HOSTILE.len() as i64
    );
    assert_eq!(
        s.count(Odd::query()).await.expect("odd"),
        HOSTILE.len() as i64
    );
}

/// Each bad value gives a typed error; afterwards the session works and nothing partial is
/// committed.
#[tokio::test]
async fn bad_values_are_typed_errors_and_commit_nothing_partial() {
    let (db, _pool, s) = setup("bad_values").await;
    if crate::direct_only(
        &db,
        "pins the client-side check of a value against the parameter type a prepared statement declares; unnamed statements (behind a pooler) leave that check to the server (22003/23514/42804)",
    ) {
        return;
    }

    // Refused before anything is sent: the transaction stays usable.
    let nul = s.add(User::new("nul\0", 1)).await;
    assert!(matches!(nul, Err(Error::InvalidInput(_))), "{nul:?}");
    let wide = s
        .raw_execute(
            "INSERT INTO users (name, age) VALUES ('w', $1)",
            vec![Value::BigInt(Some(3_000_000_000))],
        )
        .await;
    assert!(
        matches!(&wide, Err(Error::TypeMismatch { expected, .. }) if expected == "integer"),
        "{wide:?}"
    );
    let nan = s
        .raw_execute("SELECT $1::numeric", vec![Value::Double(Some(f64::NAN))])
        .await;
    assert!(
        matches!(
            nan,
            Err(Error::TypeMismatch { .. } | Error::InvalidInput(_))
        ),
        "{nan:?}"
    );
    let inf = s
        .raw_execute(
            "SELECT $1::numeric",
            vec![Value::Double(Some(f64::INFINITY))],
        )
        .await;
    assert!(
        matches!(
            inf,
            Err(Error::TypeMismatch { .. } | Error::InvalidInput(_))
        ),
        "{inf:?}"
    );
    assert_eq!(s.tx_state().await.expect("state"), TxState::Active);

    // A good row, then a batch in which one row is bad: the flush fails as a whole and the
    // commit commits nothing.
    s.add(User::new("good", 1)).await.expect("add");
    s.add(User::new("also good", 2)).await.expect("add");
    s.add(Amount {
        id: 1,
        at: chrono::NaiveDateTime::MIN,
    })
    .await
    .expect("queued");
    let flush = s.flush().await.expect_err("timestamp out of range");
    assert!(
        matches!(&flush, Error::Database(db) if db.code.starts_with("22")),
        "{flush:?}"
    );
    assert!(matches!(s.commit().await, Err(Error::TransactionAborted)));
    assert_eq!(s.count(User::query()).await.expect("usable"), 0);
    assert_eq!(s.count(Amount::query()).await.expect("usable"), 0);

    // Over-long varchar and a row that does not fit the model: typed, and the session goes on.
    let long = s
        .raw_execute(
            "CREATE TEMP TABLE short (v varchar(3)); INSERT INTO short VALUES ('abcd')",
            vec![],
        )
        .await;
    assert!(long.is_err(), "{long:?}");
    s.rollback().await.expect("rollback");
    let misfit = s.raw::<User>("SELECT 1 AS id", vec![]).await;
    assert!(
        matches!(misfit, Err(Error::TypeMismatch { .. })),
        "{misfit:?}"
    );
    s.rollback().await.expect("rollback");
    let misfit = s
        .raw::<User>(
            "SELECT 1::bigint AS id, NULL::text AS name, NULL::text AS email, 1 AS age",
            vec![],
        )
        .await;
    assert!(
        matches!(&misfit, Err(Error::TypeMismatch { column, .. }) if column == "name"),
        "{misfit:?}"
    );
    s.rollback().await.expect("rollback");
    assert_eq!(
        s.all(User::query().filter(actor_orm::Filter::from_expr(Expr::cust("true"))))
            .await
            .expect("still usable")
            .len(),
        0
    );
}

#[tokio::test]
async fn connection_settings_errors_are_typed_and_never_show_the_password() {
    let (captured, _guard) = crate::capture::capture();
    let (db, conn) = crate::connect("bad_settings").await;
    if crate::direct_only(
        &db,
        "PgBouncer, not the server, answers an unknown role or database, after its own login retry",
    ) {
        return;
    }
    drop(conn);
    let base = db.config();
    let host = match &base.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => "127.0.0.1".to_owned(),
    };
    let port = base.get_ports()[0];
    const SECRET: &str = "hunter2-do-not-log";

    // Malformed strings.
    for bad in [
        format!("postgres://ann:{SECRET}@{host}:{port}/x?sslmode=sometimes"),
        format!("postgres://ann:{SECRET}@{host}:notaport/x"),
        format!("host={host} password={SECRET} bogus_key=1"),
    ] {
        let err = Pool::builder(bad.as_str())
            .build()
            .await
            .expect_err("malformed");
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        assert!(!err.to_string().contains(SECRET), "{err}");
        assert!(!format!("{err:?}").contains(SECRET), "{err:?}");
    }

    // A role that does not exist, and a database that does not exist: typed database errors
    // at once (waiting would not help), naming the problem.
    for (user, dbname, code) in [
        ("no_such_role", db.name(), "28000"),
        ("postgres", "no_such_database", "3D000"),
    ] {
        let url = format!("postgres://{user}:{SECRET}@{host}:{port}/{dbname}");
        let pool = Pool::builder(url.as_str())
            .acquire_timeout(Duration::from_secs(10))
            .build()
            .await
            .expect("valid settings");
        assert!(!format!("{pool:?}").contains(SECRET), "{pool:?}");
        let started = std::time::Instant::now();
        let s = pool.session().await.expect("session");
        let err = s.count(User::query()).await.expect_err("cannot connect");
        assert!(started.elapsed() < Duration::from_secs(5), "failed fast");
        assert_eq!(err.code(), Some(code), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains(if code == "28000" { user } else { dbname }),
            "{text}"
        );
        assert!(!text.contains(SECRET) && !format!("{err:?}").contains(SECRET));
    }
    let logged = captured.all();
    assert!(
        logged.iter().any(|l| l.contains("connect failed")),
        "{logged:?}"
    );
    assert!(logged.iter().all(|l| !l.contains(SECRET)), "{logged:?}");
}
