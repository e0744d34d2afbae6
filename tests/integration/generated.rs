//! The models `actor-orm generate` wrote for tests/generated/dvd.sql (the fixture that
//! cli/tests/generate.rs keeps equal to its output) compile unchanged and round-trip rows.

#[path = "../generated/dvd/mod.rs"]
#[allow(dead_code)]
mod dvd;

use chrono::{DateTime, Utc};
use dvd::{
    actor::Actor, enums::MpaaRating, film::Film, film_actor::FilmActor, film_list::FilmList,
    language::Language, payment::Payment, rating_counts::RatingCounts, rental_log::RentalLog,
    store::Store,
};

const SCHEMA: &str = include_str!("../generated/dvd.sql");

#[tokio::test]
async fn the_generated_models_round_trip_rows() {
    let db = actor_orm::testing::test_database("generated_dvd")
        .await
        .expect("database");
    let client = db.connect().await.expect("connect");
    client.batch_execute(SCHEMA).await.expect("schema");
    let pool = crate::pool_on(&db, |b| b).await;
    let s = pool.session().await.expect("session");
    let epoch = DateTime::<Utc>::UNIX_EPOCH;

    let english = s
        .insert(Language {
            language_id: 0,
            name: "English".into(),
            last_update: epoch,
        })
        .await
        .expect("language");
    assert_eq!(english.name.trim_end(), "English");
    assert!(english.last_update > epoch, "the default came back");
    let films = s
        .insert_all((1..=3).map(|i| Film {
            film_id: 0,
            title: format!("Film {i}"),
            description: None,
            release_year: Some(2000 + i),
            language_id: english.language_id,
            rental_duration: 0,
            rental_rate: rust_decimal::Decimal::ZERO,
            length: Some(90),
            replacement_cost: rust_decimal::Decimal::ZERO,
            rating: (i != 3).then_some(MpaaRating::Pg13),
            special_features: Some(vec!["Trailers".into()]),
            fulltext: actor_orm::TsVector(format!("'film':1 'n{i}':2")),
            title_length: None,
            last_update: epoch,
        }))
        .await
        .expect("films");
    assert_eq!(films[2].rating, Some(MpaaRating::G), "the enum's default");
    assert_eq!(films[0].rental_rate, rust_decimal::Decimal::new(499, 2));
    assert_eq!(films[0].title_length, Some(6));
    let actor = s
        .insert(Actor {
            actor_id: 0,
            first_name: "Penelope".into(),
            last_name: "Guiness".into(),
            email: Some("Penelope@Example.com".into()),
            last_update: epoch,
        })
        .await
        .expect("actor");
    s.insert(FilmActor {
        actor_id: actor.actor_id,
        film_id: films[0].film_id,
        last_update: epoch,
    })
    .await
    .expect("film_actor");
    let store = s
        .insert(Store {
            store_id: uuid::Uuid::nil(),
            address: actor_orm::Inet(actor_orm::IpNet {
                addr: "10.0.0.1".parse().expect("ip"),
                prefix: 8,
            }),
            opens: chrono::NaiveTime::from_hms_opt(9, 0, 0).expect("time"),
            hours: None,
            attributes: None,
            location: None,
            search: None,
        })
        .await
        .expect("store");
    assert!(!store.store_id.is_nil(), "the key's default came back");
    s.insert(Payment {
        payment_id: 0,
        amount: actor_orm::Money(1_250),
        payment_date: chrono::NaiveDate::from_ymd_opt(2024, 6, 1).expect("date"),
    })
    .await
    .expect("payment");
    s.add(RentalLog {
        film_id: films[0].film_id,
        event: "rented".into(),
        logged: epoch,
    })
    .await
    .expect("log");
    s.commit().await.expect("commit");

    // Types without a mapping round-trip as their binary encoding.
    client
        .execute(
            "UPDATE store SET location = point(1.5, 2), search = to_tsquery('fat & rat')",
            &[],
        )
        .await
        .expect("raw values");
    let fresh = pool.session().await.expect("session");
    let mut read = fresh
        .get::<Store>(store.store_id)
        .await
        .expect("get")
        .expect("row");
    assert!(read.location.is_some() && read.search.is_some());
    read.hours = Some(actor_orm::PgRange::Empty);
    fresh.save(read.clone()).await.expect("save");
    fresh.commit().await.expect("commit");
    let text: String = client
        .query_one(
            "SELECT location::text || ' ' || search::text FROM store",
            &[],
        )
        .await
        .expect("text")
        .get(0);
    assert_eq!(text, "(1.5,2) 'fat' & 'rat'");

    // A composite key, a view, a materialized view.
    assert!(
        fresh
            .get::<FilmActor>((actor.actor_id, films[0].film_id))
            .await
            .expect("get")
            .is_some()
    );
    let listed = fresh
        .all(FilmList::query().order_by(FilmList::FILM_ID.asc()))
        .await
        .expect("view");
    assert_eq!(listed.len(), 3);
    assert_eq!(
        listed[0].language.as_deref().map(str::trim_end),
        Some("English")
    );
    client
        .batch_execute("REFRESH MATERIALIZED VIEW rating_counts")
        .await
        .expect("refresh");
    let counts = fresh.count(RatingCounts::query()).await.expect("count");
    assert_eq!(counts, 2);
}
