//! Real schemas: what a database the ORM did not create has (issue 17). A schema of the test's
//! own, written as a DBA would (domains, defaults, generated columns), and the statement log.

use actor_orm::{Error, Model, Pool};
use chrono::{DateTime, Utc};
use tracing::Level;

/// A film of a DVD-rental schema: `release_year` is a domain, `last_update` a NOT NULL column
/// with a default, `title_length` a generated column.
#[derive(Model, Clone, Debug, PartialEq)]
#[orm(table_name = "film")]
struct Film {
    #[orm(primary_key, auto_increment)]
    film_id: i32,
    title: String,
    release_year: Option<i32>,
    rental_rate: f64,
    #[orm(default)]
    last_update: DateTime<Utc>,
    #[orm(generated)]
    title_length: i32,
}

const SCHEMA: &str = "
    CREATE DOMAIN year AS integer CHECK (VALUE >= 1901 AND VALUE <= 2155);
    CREATE DOMAIN rate AS double precision CHECK (VALUE >= 0);
    CREATE TABLE film (
        film_id serial PRIMARY KEY,
        title text NOT NULL,
        release_year year,
        rental_rate rate NOT NULL DEFAULT 4.99,
        last_update timestamptz NOT NULL DEFAULT now(),
        title_length integer GENERATED ALWAYS AS (length(title)) STORED
    );
";

fn film(title: &str, year: Option<i32>) -> Film {
    Film {
        film_id: 0,
        title: title.into(),
        release_year: year,
        rental_rate: 2.99,
        last_update: DateTime::<Utc>::UNIX_EPOCH,
        title_length: 0,
    }
}

async fn schema(hint: &str) -> (actor_orm::testing::TestDatabase, Pool) {
    let db = actor_orm::testing::test_database(hint)
        .await
        .expect("database");
    let client = db.connect().await.expect("connect");
    client.batch_execute(SCHEMA).await.expect("schema");
    let pool = crate::pool_on(&db, |b| b).await;
    (db, pool)
}

#[tokio::test]
async fn domains_are_written_and_read_as_their_base_type() {
    let (_db, pool) = schema("schema_domains").await;
    let s = pool.session().await.expect("session");
    let a = s
        .insert(film("Academy Dinosaur", Some(2006)))
        .await
        .expect("insert");
    assert_eq!(a.release_year, Some(2006));
    // A batch (one statement for all rows) and a plain NULL.
    s.add_all([
        film("Ace Goldfinger", Some(2007)),
        film("Adaptation Holes", None),
    ])
    .await
    .expect("add_all");
    s.commit().await.expect("commit");
    let found = s
        .all(Film::query().filter(Film::RELEASE_YEAR.eq(2007)))
        .await
        .expect("filter on a domain");
    assert_eq!(found.len(), 1);
    let mut b = found[0].clone();
    b.release_year = Some(1999);
    b.rental_rate = 0.99;
    s.save(b.clone()).await.expect("save");
    s.commit().await.expect("commit");
    let again = s.get::<Film>(b.film_id).await.expect("get").expect("row");
    assert_eq!((again.release_year, again.rental_rate), (Some(1999), 0.99));
    // The domain's constraint is the server's: a typed error naming it, nothing written.
    let bad = s.insert(film("Too Early", Some(1800))).await;
    match bad {
        Err(Error::Database(db)) => {
            assert_eq!(db.code, "23514", "{db:?}");
            assert!(db.message.contains("year"), "{}", db.message);
        }
        other => panic!("expected the domain's check to refuse: {other:?}"),
    }
    s.rollback().await.expect("rollback");
    assert_eq!(s.count(Film::query()).await.expect("count"), 3);
}

#[tokio::test]
async fn a_value_that_does_not_fit_a_domain_names_the_domain_and_its_base_type() {
    let (_db, pool) = schema("schema_domain_errors").await;
    let s = pool.session().await.expect("session");
    let err = s
        .raw_execute(
            "INSERT INTO film (title, release_year) VALUES ('x', $1)",
            vec![actor_orm::Value::from("nineteen ninety")],
        )
        .await
        .expect_err("text into a domain over integer");
    insta::assert_snapshot!(err.to_string(), @"type mismatch for parameter $1: expected year (a domain over integer), found text");
}

#[tokio::test]
async fn defaults_and_generated_columns_are_left_to_the_database_and_read_back() {
    let (_db, pool) = schema("schema_defaults").await;
    let s = pool.session().await.expect("session");
    s.begin().await.expect("begin");
    let before: DateTime<Utc> = s.raw_rows("SELECT now()", vec![]).await.expect("now")[0].get(0);
    let a = s
        .insert(film("Airport Pollock", Some(2006)))
        .await
        .expect("insert");
    // Not sent: the database's default and generated values came back by RETURNING.
    assert_eq!(a.last_update, before, "the transaction's now()");
    assert_eq!(a.title_length, "Airport Pollock".len() as i32);
    // A batch leaves them out too, and a save never writes the generated column.
    s.add_all([film("Alabama Devil", None), film("Aladdin Calendar", None)])
        .await
        .expect("add_all");
    s.commit().await.expect("commit");
    let mut b = s
        .first(Film::query().filter(Film::TITLE.eq("Alabama Devil")))
        .await
        .expect("first")
        .expect("row");
    assert_eq!(b.title_length, 13);
    b.title = "Alabama Devils".into();
    b.title_length = 999;
    s.save(b.clone())
        .await
        .expect("save: the generated column is not written");
    s.commit().await.expect("commit");
    let again = s.get::<Film>(b.film_id).await.expect("get").expect("row");
    assert_eq!(again.title_length, 14, "recomputed by the server");
}

#[tokio::test]
async fn the_statement_log_shows_each_statement_with_its_session_and_values_only_when_asked() {
    let (db, pool) = schema("schema_log").await;
    let (log, _guard) = crate::capture::capture();
    let s = pool.named_session("report").await.expect("session");
    s.count(Film::query().filter(Film::TITLE.eq("secret title")))
        .await
        .expect("count");
    s.close().await.expect("close");
    let lines = log.matching(Level::DEBUG, "sql=SELECT COUNT(*)");
    assert_eq!(lines.len(), 1, "{:#?}", log.all());
    let line = &lines[0];
    assert!(line.contains("report"), "the session's label: {line}");
    assert!(
        line.contains("rows=1") && line.contains("micros="),
        "{line}"
    );
    assert!(
        !line.contains("secret title"),
        "values only when asked: {line}"
    );

    let verbose = crate::pool_on(&db, |b| b.log_values(true)).await;
    let s = verbose.session().await.expect("session");
    s.count(Film::query().filter(Film::TITLE.eq("secret title")))
        .await
        .expect("count");
    s.close().await.expect("close");
    assert_eq!(
        log.matching(Level::DEBUG, "secret title").len(),
        1,
        "{:#?}",
        log.all()
    );
}
