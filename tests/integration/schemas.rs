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
    let (db, pool) = schema("schema_domain_errors").await;
    if crate::direct_only(
        &db,
        "pins the client-side check of a value against the parameter type a prepared statement declares; unnamed statements (behind a pooler) leave that check to the server (22003/23514/42804)",
    ) {
        return;
    }
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

mod every_type {
    use std::collections::HashMap;
    use std::error::Error as StdError;
    use std::net::{IpAddr, Ipv4Addr};
    use std::ops::Bound;

    use actor_orm::tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
    use actor_orm::{
        Cidr, DbEnum, Inet, Interval, IpNet, JsonText, MacAddr, Model, Money, PgRange, PgType,
        TsVector, Xml,
    };
    use chrono::{DateTime, NaiveDate, NaiveTime, TimeZone, Utc};
    use rust_decimal::Decimal;

    /// A type of the user's own: PostgreSQL's `point`, mapped by hand.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Point {
        pub x: f64,
        pub y: f64,
    }

    impl ToSql for Point {
        fn to_sql(
            &self,
            _: &Type,
            out: &mut bytes::BytesMut,
        ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
            out.extend_from_slice(&self.x.to_be_bytes());
            out.extend_from_slice(&self.y.to_be_bytes());
            Ok(IsNull::No)
        }
        fn accepts(ty: &Type) -> bool {
            ty.name() == "point"
        }
        to_sql_checked!();
    }

    impl<'a> FromSql<'a> for Point {
        fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
            let x: [u8; 8] = raw.get(..8).ok_or("short point")?.try_into()?;
            let y: [u8; 8] = raw.get(8..16).ok_or("short point")?.try_into()?;
            Ok(Point {
                x: f64::from_be_bytes(x),
                y: f64::from_be_bytes(y),
            })
        }
        fn accepts(ty: &Type) -> bool {
            ty.name() == "point"
        }
    }

    impl PgType for Point {
        const TYPE_NAME: &'static str = "point";
        const EQUALITY: bool = false;
    }

    /// Labels with punctuation, and a case rule for the rest.
    #[derive(DbEnum, Debug, Clone, Copy, PartialEq)]
    #[orm(type_name = "mpaa_rating", rename_all = "SCREAMING-KEBAB-CASE")]
    pub enum Rating {
        G,
        #[orm(rename = "PG")]
        Pg,
        #[orm(rename = "PG-13")]
        Pg13,
        R,
        #[orm(rename = "NC-17")]
        Nc17,
        NotRated,
    }

    #[derive(Model, Clone, Debug, PartialEq)]
    #[orm(table_name = "everything")]
    pub struct Everything {
        #[orm(primary_key, auto_increment)]
        pub id: i64,
        pub opens: NaiveTime,
        pub span: Interval,
        pub host: Inet,
        pub plain_host: Option<IpAddr>,
        pub net: Cidr,
        pub mac: MacAddr,
        pub price: Money,
        pub seats: PgRange<i32>,
        pub big: PgRange<i64>,
        pub stay: PgRange<NaiveDate>,
        pub slot: Option<PgRange<DateTime<Utc>>>,
        pub local: PgRange<chrono::NaiveDateTime>,
        pub amount: PgRange<Decimal>,
        pub attrs: HashMap<String, Option<String>>,
        pub email: String,
        pub code: String,
        pub doc: Xml,
        pub raw_json: JsonText,
        pub words: TsVector,
        pub kind: u32,
        pub hosts: Vec<Inet>,
        pub rating: Rating,
        pub at: Point,
    }

    pub const SCHEMA: &str = "
        CREATE EXTENSION IF NOT EXISTS hstore;
        CREATE EXTENSION IF NOT EXISTS citext;
        CREATE TYPE mpaa_rating AS ENUM ('G', 'PG', 'PG-13', 'R', 'NC-17', 'NOT-RATED');
        CREATE TABLE everything (
            id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            opens time NOT NULL,
            span interval NOT NULL,
            host inet NOT NULL,
            plain_host inet,
            net cidr NOT NULL,
            mac macaddr NOT NULL,
            price money NOT NULL,
            seats int4range NOT NULL,
            big int8range NOT NULL,
            stay daterange NOT NULL,
            slot tstzrange,
            local tsrange NOT NULL,
            amount numrange NOT NULL,
            attrs hstore NOT NULL,
            email citext NOT NULL,
            code char(3) NOT NULL,
            doc xml NOT NULL,
            raw_json json NOT NULL,
            words tsvector NOT NULL,
            kind oid NOT NULL,
            hosts inet[] NOT NULL,
            rating mpaa_rating NOT NULL,
            at point NOT NULL
        );
    ";

    pub fn sample(n: i32) -> Everything {
        let day = NaiveDate::from_ymd_opt(2024, 3, n as u32).expect("date");
        Everything {
            id: 0,
            opens: NaiveTime::from_hms_micro_opt(9, 30, 0, 250).expect("time"),
            span: Interval::new(14, 3, 3_600_000_001),
            host: Inet(IpNet {
                addr: IpAddr::V4(Ipv4Addr::new(192, 168, 0, n as u8)),
                prefix: 24,
            }),
            plain_host: Some("::1".parse().expect("ip")),
            net: Cidr(IpNet {
                addr: IpAddr::V4(Ipv4Addr::new(10, n as u8, 0, 0)),
                prefix: 16,
            }),
            mac: MacAddr([8, 0, 0x2b, 1, 2, n as u8]),
            price: Money(12_345 + i64::from(n)),
            seats: PgRange::Between(Bound::Included(n), Bound::Excluded(n + 10)),
            big: PgRange::Between(Bound::Unbounded, Bound::Excluded(5_000_000_000)),
            stay: PgRange::Between(
                Bound::Included(day),
                Bound::Excluded(day + chrono::Days::new(3)),
            ),
            slot: Some(PgRange::Between(
                Bound::Included(Utc.with_ymd_and_hms(2024, 3, 1, 10, 0, 0).unwrap()),
                Bound::Excluded(Utc.with_ymd_and_hms(2024, 3, 1, 11, 30, 0).unwrap()),
            )),
            local: PgRange::Empty,
            amount: PgRange::Between(
                Bound::Included(Decimal::new(1050, 2)),
                Bound::Included(Decimal::new(9999, 2)),
            ),
            attrs: HashMap::from([
                ("colour".to_owned(), Some("red".to_owned())),
                ("size".to_owned(), None),
            ]),
            email: format!("Person{n}@Example.com"),
            code: format!("A{n:02}"),
            doc: Xml(format!("<film id=\"{n}\">Academy Dinosaur</film>")),
            raw_json: JsonText(format!("{{\"b\": 1, \"a\": {n}}}")),
            words: TsVector(format!("'dinosaur':2A 'epic':1 'n{n}'")),
            kind: 23,
            hosts: vec![Inet(IpNet {
                addr: "2001:db8::1".parse().expect("ip"),
                prefix: 64,
            })],
            rating: match n % 3 {
                0 => Rating::Pg13,
                1 => Rating::Nc17,
                _ => Rating::NotRated,
            },
            at: Point {
                x: 1.5,
                y: f64::from(n),
            },
        }
    }
}

#[tokio::test]
async fn every_column_type_round_trips_through_insert_read_save_filter_and_batch() {
    use actor_orm::{Interval, Money, PgRange};
    use chrono::NaiveDate;
    use every_type::*;
    let db = actor_orm::testing::test_database("schema_types")
        .await
        .expect("database");
    let client = db.connect().await.expect("connect");
    client.batch_execute(SCHEMA).await.expect("schema");
    let pool = crate::pool_on(&db, |b| b).await;
    let s = pool.session().await.expect("session");

    let one = s.insert(sample(1)).await.expect("insert");
    let mut expected = sample(1);
    expected.id = one.id;
    assert_eq!(one, expected, "every value came back as written");
    // A batch: one statement for all rows.
    s.add_all([sample(2), sample(3), sample(4)])
        .await
        .expect("add_all");
    s.commit().await.expect("commit");
    assert_eq!(s.count(Everything::query()).await.expect("count"), 4);

    // Read back on another session (no identity map): the server's forms.
    let other = pool.session().await.expect("session");
    let read = other
        .get::<Everything>(one.id)
        .await
        .expect("get")
        .expect("row");
    assert_eq!(read.email, "Person1@Example.com");
    assert_eq!(read.code, "A01");
    assert_eq!(read.rating, Rating::Nc17);
    assert_eq!(read.words.0, "'dinosaur':2A 'epic':1 'n1'");
    assert_eq!(
        read.raw_json.0, "{\"b\": 1, \"a\": 1}",
        "json keeps its text"
    );
    assert_eq!(read, expected);

    // Filters on each kind of type, all plain reads.
    let by = |f| other.count(Everything::query().filter(f));
    assert_eq!(
        by(Everything::HOST.eq(sample(2).host)).await.expect("inet"),
        1
    );
    assert_eq!(
        by(Everything::SPAN.eq(Interval::new(14, 3, 3_600_000_001)))
            .await
            .expect("interval"),
        4
    );
    assert_eq!(
        by(Everything::SEATS.eq(sample(3).seats))
            .await
            .expect("range"),
        1
    );
    assert_eq!(
        by(Everything::MAC.eq(sample(4).mac))
            .await
            .expect("macaddr"),
        1
    );
    assert_eq!(
        by(Everything::EMAIL.eq("person2@example.com"))
            .await
            .expect("citext"),
        1
    );
    assert_eq!(
        by(Everything::RATING.eq(Rating::Pg13)).await.expect("enum"),
        1
    );
    assert_eq!(
        by(Everything::PRICE.gt(Money(12_347)))
            .await
            .expect("money"),
        2
    );
    assert_eq!(
        by(Everything::WORDS.matches("dinosaur -n3"))
            .await
            .expect("fts"),
        3
    );
    assert_eq!(
        by(Everything::CODE.text_matches("simple", "a02"))
            .await
            .expect("text fts"),
        1
    );

    // Save: changed columns are written (point has no equality, so it is never compared).
    let mut changed = read.clone();
    changed.span = Interval::new(0, 1, 0);
    changed.attrs.insert("colour".into(), Some("blue".into()));
    changed.at = Point { x: -1.0, y: 2.0 };
    changed.local = PgRange::Between(
        std::ops::Bound::Included(
            NaiveDate::from_ymd_opt(2024, 1, 1)
                .expect("d")
                .and_hms_opt(0, 0, 0)
                .expect("t"),
        ),
        std::ops::Bound::Unbounded,
    );
    changed.hosts.push(sample(9).host);
    other.save(changed.clone()).await.expect("save");
    other.commit().await.expect("commit");
    let third = pool.session().await.expect("session");
    let again = third
        .get::<Everything>(one.id)
        .await
        .expect("get")
        .expect("row");
    assert_eq!(again, changed);

    // Aggregates typed as PostgreSQL types them.
    let (total, average, kinds): (Option<Money>, Option<Interval>, i64) = third
        .project(Everything::query().select((
            Everything::PRICE.sum(),
            Everything::SPAN.avg(),
            Everything::KIND.count(),
        )))
        .await
        .expect("aggregates")[0];
    assert_eq!(total, Some(Money(4 * 12_345 + 2 + 3 + 4 + 1)));
    assert_eq!(average.map(|a| a.months), Some(10), "{average:?}");
    assert_eq!(kinds, 4);
}

/// Unnamed statements (PgBouncer's transaction mode) declare a mapped type's parameters with no
/// OID, so that the server infers them; a NULL of the type keeps its type.
#[tokio::test]
async fn mapped_types_work_with_unnamed_statements_too() {
    use every_type::*;
    let db = actor_orm::testing::test_database("schema_types_unnamed")
        .await
        .expect("database");
    let client = db.connect().await.expect("connect");
    client.batch_execute(SCHEMA).await.expect("schema");
    let pool = crate::pool_on(&db, |b| b.statement_mode(actor_orm::StatementMode::Unnamed)).await;
    let s = pool.session().await.expect("session");
    let mut one = sample(1);
    one.plain_host = None;
    one.slot = None;
    let stored = s.insert(one.clone()).await.expect("insert");
    s.add_all([sample(2), sample(3)]).await.expect("add_all");
    s.commit().await.expect("commit");
    one.id = stored.id;
    assert_eq!(stored, one);
    assert_eq!(
        s.count(Everything::query().filter(Everything::HOST.eq(sample(3).host)))
            .await
            .expect("filter"),
        1
    );
    let mut changed = stored.clone();
    changed.mac = actor_orm::MacAddr([1, 2, 3, 4, 5, 6]);
    s.save(changed.clone()).await.expect("save");
    s.commit().await.expect("commit");
    let again = pool.session().await.expect("session");
    assert_eq!(
        again.get::<Everything>(stored.id).await.expect("get"),
        Some(changed)
    );
}

/// A mapped value where another type is expected is a typed error naming both, and nothing is
/// sent.
#[tokio::test]
async fn a_mapped_value_in_the_wrong_place_names_both_types() {
    let (db, pool) = schema("schema_mapped_errors").await;
    if crate::direct_only(
        &db,
        "pins the client-side check of a value against the parameter type a prepared statement declares; unnamed statements (behind a pooler) leave that check to the server (22003/23514/42804)",
    ) {
        return;
    }
    let s = pool.session().await.expect("session");
    let err = s
        .raw_execute(
            "INSERT INTO film (title, release_year) VALUES ('x', $1)",
            vec![actor_orm::ColumnValue::to_value(&actor_orm::Money(5))],
        )
        .await
        .expect_err("money into a year");
    insta::assert_snapshot!(err.to_string(), @"type mismatch for parameter $1: expected year (a domain over integer), found a money value");
    let err = s
        .raw_execute(
            "INSERT INTO film (title) VALUES ($1)",
            vec![actor_orm::ColumnValue::to_value(&Some(1.5f64))],
        )
        .await
        .expect_err("a float as text");
    insta::assert_snapshot!(err.to_string(), @"type mismatch for parameter $1: expected text, found a float (1.5)");
}

/// `insert_all` returns the stored rows in the order given, one statement per batch, whether the
/// database generates the key (matched by an ordinal sent with the batch) or the caller gives it
/// (matched by key).
#[tokio::test]
async fn insert_all_returns_every_stored_row_in_the_order_given() {
    let (db, pool) = schema("schema_insert_all").await;
    if crate::direct_only(
        &db,
        "pins the SQL of prepared mode (the batch as one array per column); unnamed statements send VALUES lists",
    ) {
        return;
    }
    let (log, _guard) = crate::capture::capture();
    let s = pool.session().await.expect("session");
    let titles: Vec<String> = (0..50).map(|i| format!("Film {i:02}")).collect();
    let films = s
        .insert_all(titles.iter().map(|t| film(t, Some(2000))))
        .await
        .expect("insert_all");
    assert_eq!(films.len(), 50);
    for (f, t) in films.iter().zip(&titles) {
        assert_eq!(&f.title, t, "matched to its own input");
        assert_eq!(f.title_length, t.len() as i32, "generated column read back");
        assert!(f.film_id > 0);
    }
    let mut keys: Vec<i32> = films.iter().map(|f| f.film_id).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), 50, "every row its own key");
    assert_eq!(
        log.matching(Level::DEBUG, "sql=WITH input").len(),
        1,
        "one statement for the batch"
    );
    // Keys given by the caller, in an order the server would not choose.
    let given: Vec<Film> = [907, 903, 905, 901]
        .into_iter()
        .map(|k| Film {
            film_id: k,
            ..film(&format!("Given {k}"), None)
        })
        .collect();
    let stored = s.insert_all(given.clone()).await.expect("insert_all");
    let ids: Vec<i32> = stored.iter().map(|f| f.film_id).collect();
    assert_eq!(ids, vec![907, 903, 905, 901]);
    assert!(
        stored
            .iter()
            .all(|f| f.title == format!("Given {}", f.film_id))
    );
    s.commit().await.expect("commit");
    assert_eq!(s.count(Film::query()).await.expect("count"), 54);
}

mod shapes {
    use actor_orm::Model;
    use chrono::{DateTime, NaiveDate, Utc};
    use rust_decimal::Decimal;

    /// An append-only table without a primary key.
    #[derive(Model, Clone, Debug, PartialEq)]
    #[orm(table_name = "rental_history", no_key)]
    pub struct History {
        pub film_id: i32,
        pub event: String,
        #[orm(default)]
        pub at: DateTime<Utc>,
    }

    /// A view.
    #[derive(Model, Clone, Debug, PartialEq)]
    #[orm(table_name = "film_list", read_only)]
    pub struct FilmListRow {
        pub film_id: i32,
        pub title: String,
        pub release_year: Option<i32>,
    }

    /// A materialized view.
    #[derive(Model, Clone, Debug, PartialEq)]
    #[orm(table_name = "film_years", read_only)]
    pub struct FilmYear {
        pub release_year: Option<i32>,
        pub films: i64,
    }

    /// A table partitioned by date: its key includes the partition column.
    #[derive(Model, Clone, Debug, PartialEq)]
    #[orm(table_name = "payment")]
    pub struct Payment {
        #[orm(primary_key, auto_increment)]
        pub payment_id: i32,
        #[orm(primary_key)]
        pub paid_on: NaiveDate,
        pub amount: Decimal,
    }

    pub const SCHEMA: &str = "
        CREATE TABLE rental_history (
            film_id integer NOT NULL,
            event text NOT NULL,
            at timestamptz NOT NULL DEFAULT now()
        );
        CREATE VIEW film_list AS SELECT film_id, title, release_year FROM film;
        CREATE MATERIALIZED VIEW film_years AS
            SELECT release_year, count(*) AS films FROM film GROUP BY release_year;
        CREATE TABLE payment (
            payment_id serial,
            paid_on date NOT NULL,
            amount numeric(7, 2) NOT NULL,
            PRIMARY KEY (payment_id, paid_on)
        ) PARTITION BY RANGE (paid_on);
        CREATE TABLE payment_2024 PARTITION OF payment
            FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
        CREATE TABLE payment_2025 PARTITION OF payment
            FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
    ";
}

#[tokio::test]
async fn views_are_read_key_less_tables_inserted_into_and_partitions_written_by_full_key() {
    use chrono::NaiveDate;
    use rust_decimal::Decimal;
    use shapes::*;
    let (db, pool) = schema("schema_shapes").await;
    let client = db.connect().await.expect("connect");
    let s = pool.session().await.expect("session");
    s.insert_all([
        film("Academy Dinosaur", Some(2006)),
        film("Ace Goldfinger", Some(2006)),
    ])
    .await
    .expect("films");
    s.commit().await.expect("commit");
    client.batch_execute(shapes::SCHEMA).await.expect("schema");

    // A view and a materialized view: queried like any model, never in the identity map.
    let listed = s
        .all(FilmListRow::query().order_by(FilmListRow::FILM_ID.asc()))
        .await
        .expect("view");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].title, "Academy Dinosaur");
    let years = s.all(FilmYear::query()).await.expect("materialized view");
    assert_eq!(
        years,
        vec![FilmYear {
            release_year: Some(2006),
            films: 2
        }]
    );

    // A table without a key: inserted into (one by one and in a batch) and queried.
    let at = DateTime::<Utc>::UNIX_EPOCH;
    let one = s
        .insert(History {
            film_id: 1,
            event: "rented".into(),
            at,
        })
        .await
        .expect("insert");
    assert!(one.at > at, "the default came back");
    s.add_all((0..3).map(|i| History {
        film_id: 2,
        event: format!("event {i}"),
        at,
    }))
    .await
    .expect("add_all");
    s.commit().await.expect("commit");
    assert_eq!(
        s.count(History::query().filter(History::FILM_ID.eq(2)))
            .await
            .expect("count"),
        3
    );
    // The same row twice is two rows: nothing is merged by a key it does not have.
    let twice = s
        .insert_all([
            History {
                film_id: 3,
                event: "same".into(),
                at,
            },
            History {
                film_id: 3,
                event: "same".into(),
                at,
            },
        ])
        .await
        .expect("insert_all");
    assert_eq!(twice.len(), 2);
    s.commit().await.expect("commit");
    assert_eq!(s.count(History::query()).await.expect("count"), 6);

    // A partitioned table: rows land in their partitions, and are read, saved and deleted by
    // their full key.
    let paid = s
        .insert_all([
            Payment {
                payment_id: 0,
                paid_on: NaiveDate::from_ymd_opt(2024, 5, 1).expect("d"),
                amount: Decimal::new(499, 2),
            },
            Payment {
                payment_id: 0,
                paid_on: NaiveDate::from_ymd_opt(2025, 2, 1).expect("d"),
                amount: Decimal::new(299, 2),
            },
        ])
        .await
        .expect("payments");
    s.commit().await.expect("commit");
    let in_2025: i64 = client
        .query_one("SELECT count(*) FROM payment_2025", &[])
        .await
        .expect("partition")
        .get(0);
    assert_eq!(in_2025, 1);
    let fresh = pool.session().await.expect("session");
    let mut p = fresh
        .get::<Payment>((paid[1].payment_id, paid[1].paid_on))
        .await
        .expect("get")
        .expect("row");
    p.amount = Decimal::new(399, 2);
    fresh.save(p.clone()).await.expect("save");
    fresh.delete(paid[0].clone()).await.expect("delete");
    fresh.commit().await.expect("commit");
    let left: Vec<(i32, Decimal)> = client
        .query("SELECT payment_id, amount FROM payment", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(left, vec![(p.payment_id, Decimal::new(399, 2))]);
}

/// Error texts name types as a user writes them: Rust's (`String`, not `alloc::string::String`;
/// `i32`, not an internal wrapper) and PostgreSQL's (`integer`, not `int4`).
#[tokio::test]
async fn error_texts_name_rust_and_postgresql_types_as_written() {
    /// The film table read with the wrong type for `release_year`.
    #[derive(Model, Clone, Debug)]
    #[orm(table_name = "film")]
    struct Misread {
        #[orm(primary_key)]
        film_id: i32,
        release_year: Option<String>,
    }
    /// And a field narrower than its column.
    #[derive(Model, Clone, Debug)]
    #[orm(table_name = "film")]
    struct Narrow {
        #[orm(primary_key)]
        film_id: i16,
        title: i32,
    }
    let (_db, pool) = schema("schema_error_texts").await;
    let s = pool.session().await.expect("session");
    s.insert(film("Academy Dinosaur", Some(2006)))
        .await
        .expect("insert");
    s.commit().await.expect("commit");
    let err = s.all(Misread::query()).await.expect_err("wrong type");
    insta::assert_snapshot!(err.to_string(), @"type mismatch for release_year: expected String, found integer");
    let err = s.all(Narrow::query()).await.expect_err("wrong type");
    insta::assert_snapshot!(err.to_string(), @"type mismatch for film_id: expected i16, found integer");
}

/// Full-text filters are plain reads: no transaction is opened for them.
#[tokio::test]
async fn a_full_text_filter_is_a_plain_read() {
    let (db, pool) = schema("schema_fts_read").await;
    let client = db.connect().await.expect("connect");
    client
        .batch_execute("INSERT INTO film (title) VALUES ('Academy Dinosaur'), ('Ace Goldfinger')")
        .await
        .expect("rows");
    let (log, _guard) = crate::capture::capture();
    let s = pool.session().await.expect("session");
    let n = s
        .count(Film::query().filter(Film::TITLE.text_matches("english", "dinosaurs")))
        .await
        .expect("search");
    assert_eq!(n, 1, "stemmed: dinosaurs finds Dinosaur");
    s.close().await.expect("close");
    assert!(
        log.matching(Level::DEBUG, "sql=BEGIN").is_empty(),
        "{:#?}",
        log.all()
    );
}
