//! Every supported type round-trips through PostgreSQL; bad values are typed errors.

use actor_orm::sea_query::Value;
use actor_orm::{Error, SessionState, TxState};
use chrono::{NaiveDate, TimeZone as _, Utc};

use crate::models::*;

pub fn sample() -> Everything {
    Everything {
        id: uuid::Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0),
        flag: true,
        small: i16::MIN,
        medium: i32::MAX,
        big: i64::MIN,
        single: 1.5,
        double: -2.25e300,
        text: "plain".into(),
        short_text: "twenty chars maximum".into(),
        bytes: vec![0, 1, 2, 255],
        day: NaiveDate::from_ymd_opt(2024, 2, 29).expect("date"),
        local_time: NaiveDate::from_ymd_opt(1999, 12, 31)
            .expect("date")
            .and_hms_micro_opt(23, 59, 59, 999_999)
            .expect("time"),
        instant: Utc
            .with_ymd_and_hms(2030, 1, 2, 3, 4, 5)
            .single()
            .expect("instant"),
        doc: serde_json::json!({"a": [1, 2, {"b": null}], "c": "d"}),
        settings: Settings {
            theme: "dark".into(),
            sizes: vec![1, 2, 3],
        },
        amount: "12345678901234567890.123456789".parse().expect("decimal"),
        color: Color::DarkBlue,
        mood: Mood::SoSo,
        numbers: vec![1, -2, i64::MAX],
        words: vec!["a".into(), "b c".into(), "'quoted'".into()],
        maybe_flag: Some(false),
        maybe_small: None,
        maybe_big: Some(7),
        maybe_text: None,
        maybe_bytes: Some(vec![]),
        maybe_uuid: None,
        maybe_day: None,
        maybe_instant: Some(
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0)
                .single()
                .expect("epoch"),
        ),
        maybe_doc: None,
        maybe_settings: None,
        maybe_amount: Some(rust_decimal::Decimal::new(-5, 2)),
        maybe_mood: None,
        maybe_numbers: Some(vec![]),
    }
}

#[tokio::test]
async fn every_type_round_trips() {
    let (_db, conn) = crate::connect("types").await;
    create_schema(&conn).await;
    let mut s = SessionState::new();
    let original = sample();
    let stored = s.insert(&conn, original.clone()).await.expect("insert");
    assert_eq!(stored, original);
    s.commit(&conn).await.expect("commit");
    // After commit the identity map is empty: this reads from the database.
    let read = s
        .get::<Everything>(&conn, original.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(read, original);

    // The Options the other way round.
    let mut other = sample();
    other.id = uuid::Uuid::from_u128(2);
    other.maybe_flag = None;
    other.maybe_small = Some(-3);
    other.maybe_big = None;
    other.maybe_text = Some("text".into());
    other.maybe_bytes = None;
    other.maybe_uuid = Some(uuid::Uuid::from_u128(9));
    other.maybe_day = Some(NaiveDate::from_ymd_opt(1, 1, 1).expect("date"));
    other.maybe_instant = None;
    other.maybe_doc = Some(serde_json::json!(null));
    other.maybe_settings = Some(Settings {
        theme: "light".into(),
        sizes: vec![],
    });
    other.maybe_amount = None;
    other.maybe_mood = Some(Mood::Happy);
    other.maybe_numbers = None;
    s.insert(&conn, other.clone()).await.expect("insert");
    s.commit(&conn).await.expect("commit");
    let read = s
        .get::<Everything>(&conn, other.id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(read, other);

    // The enums are stored as the labels, in text and in a PostgreSQL enum type.
    let rows = s
        .raw_rows(
            &conn,
            "SELECT color, mood::text, pg_typeof(mood)::text FROM everything WHERE id = $1",
            vec![Value::Uuid(Some(original.id))],
        )
        .await
        .expect("raw");
    assert_eq!(rows[0].get::<_, String>(0), "dark_blue");
    assert_eq!(rows[0].get::<_, String>(1), "so-so");
    assert_eq!(rows[0].get::<_, String>(2), "mood");
    // Filters on enum columns bind the label.
    let found = s
        .all(
            &conn,
            Everything::query().filter(Everything::MAYBE_MOOD.eq(Mood::Happy)),
        )
        .await
        .expect("filter");
    assert_eq!(
        found.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![other.id]
    );
    let found = s
        .all(
            &conn,
            Everything::query().filter(Everything::COLOR.eq(Color::DarkBlue)),
        )
        .await
        .expect("filter");
    assert_eq!(found.len(), 2);
}

/// sea-query sends whatever width the Rust value has; the server rejects a mismatch with
/// "insufficient data left in message". Here the width follows the column.
#[tokio::test]
async fn integer_width_follows_the_column_or_is_a_typed_error() {
    let (db, conn) = crate::connect("widths").await;
    if crate::direct_only(
        &db,
        "pins the client-side check of a value against the parameter type a prepared statement declares; unnamed statements (behind a pooler) leave that check to the server (22003/23514/42804)",
    ) {
        return;
    }
    // The table says integer and smallint; the model below says i64 for both.
    conn.batch(
        "CREATE TABLE narrow (id bigint PRIMARY KEY, n integer NOT NULL, s smallint NOT NULL)",
    )
    .await
    .expect("create");

    #[derive(actor_orm::Model, Clone, Debug, PartialEq)]
    #[orm(table_name = "narrow")]
    struct Narrow {
        #[orm(primary_key)]
        id: i64,
        n: i64,
        s: i64,
    }

    let mut s = SessionState::new();
    let ok = Narrow {
        id: 1,
        n: 2_000_000_000,
        s: -32768,
    };
    assert_eq!(s.insert(&conn, ok.clone()).await.expect("fits"), ok);
    let err = s
        .insert(
            &conn,
            Narrow {
                id: 2,
                n: 3_000_000_000,
                s: 0,
            },
        )
        .await
        .expect_err("does not fit");
    match &err {
        Error::TypeMismatch {
            column,
            expected,
            found,
        } => {
            assert_eq!(column, "n");
            assert_eq!(expected, "integer");
            assert!(found.contains("3000000000"), "{found}");
        }
        other => panic!("expected a type mismatch, got {other:?}"),
    }
    // Nothing was sent: the transaction is intact and the session goes on.
    assert_eq!(s.tx_state(), TxState::Active);
    // Raw SQL too: an i64 where the server wants smallint, and i16 where it wants bigint.
    let rows = s
        .raw_rows(
            &conn,
            "SELECT $1::smallint, $2::bigint",
            vec![Value::BigInt(Some(5)), Value::SmallInt(Some(-7))],
        )
        .await
        .expect("raw widths");
    assert_eq!(
        (rows[0].get::<_, i16>(0), rows[0].get::<_, i64>(1)),
        (5, -7)
    );
    let err = s
        .raw_rows(
            &conn,
            "SELECT $1::smallint",
            vec![Value::BigInt(Some(70_000))],
        )
        .await
        .expect_err("too wide");
    assert!(
        matches!(&err, Error::TypeMismatch { column, .. } if column == "parameter $1"),
        "{err:?}"
    );
    s.commit(&conn).await.expect("commit");
    let all = s.all(&conn, Narrow::query()).await.expect("read");
    assert_eq!(all, vec![ok]);
}

#[tokio::test]
async fn hostile_strings_are_data() {
    let (_db, conn) = crate::connect("hostile").await;
    create_schema(&conn).await;
    let mut s = SessionState::new();
    let hostile = [
        "'; DROP TABLE users; --",
        "Robert'); DROP TABLE users;--",
        "\" OR \"1\"=\"1",
        "$1 $2 ?",
        "back\\slash",
        "unicode: ✓ ünïcödé 日本語 🦀 \u{202e}",
        "line\nbreak\ttab",
    ];
    for (i, text) in hostile.iter().enumerate() {
        let u = s
            .insert(&conn, User::new(text, i as i32))
            .await
            .expect("insert hostile");
        assert_eq!(u.name, *text);
    }
    // 1 MB of text (in a column without an index: a b-tree entry is limited to a third of a page).
    let big = "x".repeat(1024 * 1024);
    let mut large = User::new("large", 99);
    large.email = Some(big.clone());
    s.insert(&conn, large).await.expect("1 MB of text");
    s.commit(&conn).await.expect("commit");
    for text in hostile {
        let found = s
            .all(&conn, User::query().filter(User::NAME.eq(text)))
            .await
            .expect("query");
        assert_eq!(found.len(), 1, "{text}");
        let like = s
            .all(&conn, User::query().filter(User::NAME.like(text)))
            .await
            .expect("like");
        assert!(like.len() <= 1);
    }
    let found = s
        .all(&conn, User::query().filter(User::EMAIL.eq(big.as_str())))
        .await
        .expect("query");
    assert_eq!(found[0].email.as_ref().map(String::len), Some(1024 * 1024));
    // The table is still there.
    assert_eq!(
        s.count(&conn, &User::query()).await.expect("count"),
        hostile.len() as i64 + 1
    );
}

#[tokio::test]
async fn nul_in_text_is_a_typed_error_and_the_connection_stays_usable() {
    let (_db, conn) = crate::connect("nul").await;
    create_schema(&conn).await;
    let mut s = SessionState::new();
    s.insert(&conn, User::new("before", 1))
        .await
        .expect("insert");
    let err = s
        .insert(&conn, User::new("nul\0byte", 2))
        .await
        .expect_err("NUL refused");
    assert!(
        matches!(err, Error::InvalidInput(ref m) if m.contains("NUL")),
        "{err:?}"
    );
    let err = s
        .add(User::new("also\0nul", 3))
        .expect_err("refused when added");
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    // Raw SQL as well.
    let err = s
        .raw_rows(
            &conn,
            "SELECT $1::text",
            vec![Value::String(Some("a\0b".into()))],
        )
        .await
        .expect_err("raw NUL");
    assert!(matches!(err, Error::InvalidInput(_)), "{err:?}");
    assert_eq!(s.tx_state(), TxState::Active, "nothing reached the server");
    s.insert(&conn, User::new("after", 4))
        .await
        .expect("still usable");
    s.commit(&conn).await.expect("commit");
    let names: Vec<String> = s
        .all(&conn, User::query().order_by(User::AGE.asc()))
        .await
        .expect("all")
        .into_iter()
        .map(|u| u.name)
        .collect();
    assert_eq!(names, vec!["before", "after"]);
}

#[tokio::test]
async fn bad_rows_are_typed_errors_not_panics() {
    let (_db, conn) = crate::connect("badrows").await;
    create_schema(&conn).await;
    let mut s = SessionState::new();
    // A NULL where the model has no Option.
    let err = s
        .raw::<User>(
            &conn,
            "SELECT 1::bigint AS id, NULL::text AS name, NULL::text AS email, 3 AS age",
            vec![],
        )
        .await
        .expect_err("NULL");
    assert!(
        matches!(&err, Error::TypeMismatch { column, found, .. } if column == "name" && found == "NULL"),
        "{err:?}"
    );
    // A column of the wrong type.
    let err = s
        .raw::<User>(
            &conn,
            "SELECT 'x'::text AS id, 'n' AS name, NULL::text AS email, 3 AS age",
            vec![],
        )
        .await
        .expect_err("type");
    assert!(
        matches!(&err, Error::TypeMismatch { column, found, .. } if column == "id" && found == "text"),
        "{err:?}"
    );
    // A missing column.
    let err = s
        .raw::<User>(
            &conn,
            "SELECT 1::bigint AS id, 'n' AS name, 3 AS age",
            vec![],
        )
        .await
        .expect_err("missing");
    assert!(
        matches!(&err, Error::TypeMismatch { column, .. } if column == "email"),
        "{err:?}"
    );
    // An integer column wider than the field.
    let err = s
        .raw::<User>(
            &conn,
            "SELECT 1::bigint AS id, 'n' AS name, NULL::text AS email, 3::bigint AS age",
            vec![],
        )
        .await
        .expect_err("width");
    assert!(
        matches!(&err, Error::TypeMismatch { column, .. } if column == "age"),
        "{err:?}"
    );
    // An enum label the Rust enum does not know.
    conn.batch("INSERT INTO everything (id, flag, small, medium, big, single, double, text, short_text, bytes, day, local_time, instant, doc, settings, amount, color, mood, numbers, words) VALUES (gen_random_uuid(), true, 1, 1, 1, 1, 1, 't', 's', '', '2020-01-01', '2020-01-01', now(), '{}', '{\"theme\":\"x\",\"sizes\":[]}', 1, 'purple', 'sad', '{}', '{}')").await.expect("odd row");
    let err = s
        .all(&conn, Everything::query())
        .await
        .expect_err("unknown label");
    assert!(
        matches!(&err, Error::TypeMismatch { column, .. } if column == "color"),
        "{err:?}"
    );
    // Over-long varchar is refused before sending, naming the column.
    let mut e = sample();
    e.short_text = "this is longer than twenty characters".into();
    let err = s.insert(&conn, e).await.expect_err("too long");
    assert!(
        matches!(&err, Error::TypeMismatch { column, .. } if column == "short_text"),
        "{err:?}"
    );
    s.raw_rows(&conn, "SELECT 1", vec![])
        .await
        .expect("usable after all of that");
}

/// Every scalar type, for the batch insert (array columns take the multi-row VALUES path).
#[derive(actor_orm::Model, Clone, Debug, PartialEq)]
#[orm(table_name = "scalars")]
struct Scalars {
    #[orm(primary_key, auto_increment)]
    id: i64,
    flag: bool,
    small: i16,
    medium: i32,
    single: f32,
    double: f64,
    text: String,
    #[orm(max_length = 20)]
    short_text: String,
    bytes: Vec<u8>,
    day: NaiveDate,
    local_time: chrono::NaiveDateTime,
    instant: chrono::DateTime<Utc>,
    doc: serde_json::Value,
    #[orm(json)]
    settings: Settings,
    amount: rust_decimal::Decimal,
    color: Color,
    mood: Mood,
    maybe_text: Option<String>,
    maybe_uuid: Option<uuid::Uuid>,
    maybe_mood: Option<Mood>,
    maybe_amount: Option<rust_decimal::Decimal>,
}

fn scalars(i: i32) -> Scalars {
    let e = sample();
    Scalars {
        id: 0,
        flag: i % 2 == 0,
        small: e.small,
        medium: i,
        single: e.single,
        double: e.double,
        text: format!("'; DROP TABLE scalars; -- {i}"),
        short_text: e.short_text,
        bytes: vec![i as u8, 0, 255],
        day: e.day,
        local_time: e.local_time,
        instant: e.instant,
        doc: serde_json::json!({ "i": i, "nested": [null, "x"] }),
        settings: e.settings,
        amount: e.amount,
        color: if i % 2 == 0 {
            Color::Red
        } else {
            Color::DarkBlue
        },
        mood: Mood::SoSo,
        maybe_text: (i % 2 == 0).then(|| format!("t{i}")),
        maybe_uuid: (i % 2 == 1).then(|| uuid::Uuid::from_u128(i as u128)),
        maybe_mood: (i % 2 == 0).then_some(Mood::Happy),
        maybe_amount: None,
    }
}

#[tokio::test]
async fn a_batch_insert_sends_one_array_per_column_and_every_type_round_trips() {
    let (db, conn) = crate::connect("batch_types").await;
    if crate::direct_only(
        &db,
        "pins the SQL of prepared mode (a batch insert as one array per column); unnamed statements send VALUES lists",
    ) {
        return;
    }
    create_schema(&conn).await;
    conn.batch(&actor_orm::ddl::create_table::<Scalars>())
        .await
        .expect("create");
    let mut s = SessionState::new();
    let rows: Vec<Scalars> = (1..=5).map(scalars).collect();
    s.add_all(rows.clone()).expect("add");
    conn.record_statements(true);
    s.flush(&conn).await.expect("flush");
    let sent = conn.take_statements();
    let inserts: Vec<&String> = sent.iter().filter(|q| q.starts_with("INSERT")).collect();
    assert_eq!(inserts.len(), 1, "{sent:#?}");
    assert!(
        inserts[0].contains("SELECT * FROM unnest($1::"),
        "{}",
        inserts[0]
    );
    assert!(
        inserts[0].contains(r#""public"."mood"[]"#),
        "{}",
        inserts[0]
    );
    s.commit(&conn).await.expect("commit");

    // Returned in order: the keys the database gave, and every value as it was.
    let read = s
        .all(&conn, Scalars::query().order_by(Scalars::ID.asc()))
        .await
        .expect("read");
    let expected: Vec<Scalars> = rows
        .into_iter()
        .zip(1..)
        .map(|(mut r, id)| {
            r.id = id;
            r
        })
        .collect();
    assert_eq!(read, expected);

    // A model with array columns still goes in as one statement (multi-row VALUES).
    let mut a = sample();
    let mut b = sample();
    a.id = uuid::Uuid::from_u128(11);
    b.id = uuid::Uuid::from_u128(12);
    s.add_all(vec![a.clone(), b.clone()]).expect("add");
    s.flush(&conn).await.expect("flush arrays");
    let sent = conn.take_statements();
    assert!(
        sent.iter()
            .any(|q| q.starts_with(r#"INSERT INTO "everything""#) && q.contains(") VALUES (")),
        "{sent:#?}"
    );
    s.commit(&conn).await.expect("commit");
    let n = s.count(&conn, &Everything::query()).await.expect("count");
    assert_eq!(n, 2);
}

#[tokio::test]
async fn a_bad_value_in_a_batch_is_a_typed_error_naming_its_column_and_nothing_is_written() {
    let (db, conn) = crate::connect("batch_bad").await;
    if crate::direct_only(
        &db,
        "pins the client-side check of a value against the parameter type a prepared statement declares; unnamed statements (behind a pooler) leave that check to the server (22003/23514/42804)",
    ) {
        return;
    }
    conn.batch("CREATE TABLE narrow (id bigserial PRIMARY KEY, n integer NOT NULL, t varchar(3))")
        .await
        .expect("create");

    #[derive(actor_orm::Model, Clone, Debug, PartialEq)]
    #[orm(table_name = "narrow")]
    struct Narrow {
        #[orm(primary_key, auto_increment)]
        id: i64,
        n: i64,
        t: Option<String>,
    }
    let row = |n: i64, t: &str| Narrow {
        id: 0,
        n,
        t: Some(t.into()),
    };

    let mut s = SessionState::new();
    // Too wide for the column: refused before the batch is sent.
    s.add_all(vec![row(1, "a"), row(3_000_000_000, "b"), row(3, "c")])
        .expect("add");
    let err = s.flush(&conn).await.expect_err("does not fit");
    assert!(
        matches!(&err, Error::TypeMismatch { column, expected, .. } if column == "n" && expected == "integer"),
        "{err:?}"
    );
    // Refused while the flush was planned: nothing was sent, not even the BEGIN.
    assert_eq!(s.tx_state(), TxState::Idle);
    // Too long for varchar(3): the server refuses the whole statement.
    s.add_all(vec![row(1, "abc"), row(2, "abcd")]).expect("add");
    let err = s.flush(&conn).await.expect_err("too long");
    assert_eq!(err.code(), Some("22001"), "{err:?}");
    assert!(matches!(
        s.commit(&conn).await,
        Err(Error::TransactionAborted)
    ));
    let n: i64 = conn
        .client()
        .query_one("SELECT count(*) FROM narrow", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0, "nothing of either batch was written");
}
