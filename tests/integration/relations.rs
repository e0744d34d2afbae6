//! Relations and eager loading: each kind of relation loads right, in a counted number of
//! statements (one per relation, whatever the number of parents), with its SQL pinned; nesting,
//! trees, the identity map, serde, and the N+1 detector.

use actor_orm::{Error, Model, NPlusOne, Pool};
use serde::Serialize;
use tracing::Level;

#[derive(Model, Clone, Debug, PartialEq, Serialize)]
#[orm(
    table_name = "language",
    has_many(name = "films", model = Film, by = "language_id")
)]
pub struct Language {
    #[orm(primary_key, auto_increment)]
    pub language_id: i32,
    pub name: String,
}

#[derive(Model, Clone, Debug, PartialEq, Serialize)]
#[orm(
    table_name = "category",
    has_many(name = "children", model = Category, by = "parent_id"),
    has_many(name = "films", model = Film, by = "category_id")
)]
pub struct Category {
    #[orm(primary_key, auto_increment)]
    pub category_id: i32,
    pub name: String,
    #[orm(references = Category)]
    pub parent_id: Option<i32>,
}

#[derive(Model, Clone, Debug, PartialEq, Serialize)]
#[orm(
    table_name = "film",
    many_to_many(name = "actors", model = Actor, through = FilmActor, from = "film_id", to = "actor_id"),
    has_one(name = "detail", model = FilmDetail, by = "film_id")
)]
pub struct Film {
    #[orm(primary_key, auto_increment)]
    pub film_id: i32,
    pub title: String,
    #[orm(references = Language)]
    pub language_id: i32,
    #[orm(references = Category)]
    pub category_id: Option<i32>,
}

#[derive(Model, Clone, Debug, PartialEq, Serialize)]
#[orm(
    table_name = "actor",
    many_to_many(name = "films", model = Film, through = FilmActor, from = "actor_id", to = "film_id")
)]
pub struct Actor {
    #[orm(primary_key, auto_increment)]
    pub actor_id: i32,
    pub name: String,
}

#[derive(Model, Clone, Debug, PartialEq)]
#[orm(table_name = "film_actor")]
pub struct FilmActor {
    #[orm(primary_key, references = Actor)]
    pub actor_id: i32,
    #[orm(primary_key, references = Film)]
    pub film_id: i32,
}

#[derive(Model, Clone, Debug, PartialEq, Serialize)]
#[orm(table_name = "film_detail")]
pub struct FilmDetail {
    #[orm(primary_key, references = Film)]
    pub film_id: i32,
    pub synopsis: String,
}

/// A composite key, and a composite foreign key to it.
#[derive(Model, Clone, Debug, PartialEq)]
#[orm(
    table_name = "rental",
    has_many(name = "payments", model = RentalPayment, by = "store_id, rental_no")
)]
pub struct Rental {
    #[orm(primary_key)]
    pub store_id: i32,
    #[orm(primary_key)]
    pub rental_no: i32,
    pub customer: String,
}

#[derive(Model, Clone, Debug, PartialEq)]
#[orm(
    table_name = "rental_payment",
    belongs_to(name = "rental", model = Rental, by = "store_id, rental_no")
)]
pub struct RentalPayment {
    #[orm(primary_key, auto_increment)]
    pub payment_id: i32,
    pub store_id: i32,
    pub rental_no: i32,
    pub amount: i32,
}

const SCHEMA: &str = "
    CREATE TABLE language (language_id serial PRIMARY KEY, name text NOT NULL);
    CREATE TABLE category (
        category_id serial PRIMARY KEY,
        name text NOT NULL,
        parent_id integer REFERENCES category
    );
    CREATE TABLE film (
        film_id serial PRIMARY KEY,
        title text NOT NULL,
        language_id integer NOT NULL REFERENCES language,
        category_id integer REFERENCES category
    );
    CREATE TABLE actor (actor_id serial PRIMARY KEY, name text NOT NULL);
    CREATE TABLE film_actor (
        actor_id integer REFERENCES actor,
        film_id integer REFERENCES film,
        PRIMARY KEY (actor_id, film_id)
    );
    CREATE TABLE film_detail (film_id integer PRIMARY KEY REFERENCES film, synopsis text NOT NULL);
    CREATE TABLE rental (
        store_id integer, rental_no integer, customer text NOT NULL,
        PRIMARY KEY (store_id, rental_no)
    );
    CREATE TABLE rental_payment (
        payment_id serial PRIMARY KEY, store_id integer NOT NULL, rental_no integer NOT NULL,
        amount integer NOT NULL,
        FOREIGN KEY (store_id, rental_no) REFERENCES rental
    );
    INSERT INTO language (name) VALUES ('English'), ('French'), ('Klingon');
    -- Drama > Family > Animation; Comedy.
    INSERT INTO category (name, parent_id) VALUES ('Drama', NULL), ('Comedy', NULL);
    INSERT INTO category (name, parent_id) VALUES ('Family', 1);
    INSERT INTO category (name, parent_id) VALUES ('Animation', 3);
    INSERT INTO film (title, language_id, category_id) VALUES
        ('Academy Dinosaur', 1, 1), ('Ace Goldfinger', 1, 2), ('Adaptation Holes', 2, 3),
        ('Affair Prejudice', 1, 4), ('African Egg', 2, NULL);
    INSERT INTO actor (name) VALUES ('Penelope'), ('Nick'), ('Ed');
    INSERT INTO film_actor VALUES (1, 1), (2, 1), (1, 2), (3, 3), (3, 4);
    INSERT INTO film_detail VALUES (1, 'A epic drama of a dinosaur');
    INSERT INTO rental VALUES (1, 1, 'Mary'), (1, 2, 'Patricia'), (2, 1, 'Linda');
    INSERT INTO rental_payment (store_id, rental_no, amount) VALUES (1, 1, 299), (1, 1, 99), (2, 1, 499);
";

async fn pool_with(hint: &str, n_plus_one: NPlusOne) -> (actor_orm::testing::TestDatabase, Pool) {
    let db = actor_orm::testing::test_database(hint)
        .await
        .expect("database");
    db.connect()
        .await
        .expect("connect")
        .batch_execute(SCHEMA)
        .await
        .expect("schema");
    let pool = crate::pool_on(&db, |b| b.n_plus_one(n_plus_one)).await;
    (db, pool)
}

/// The SQL of every statement the session sent since `log` started capturing.
fn statements(log: &crate::capture::Captured) -> Vec<String> {
    log.matching(Level::DEBUG, "sql=")
        .iter()
        .filter_map(|l| {
            let at = l.find("sql=")? + 4;
            let end = l[at..].find(" rows=").map_or(l.len(), |e| at + e);
            Some(l[at..end].to_owned())
        })
        .collect()
}

#[tokio::test]
async fn to_many_to_one_many_to_many_and_has_one_each_take_one_statement() {
    let (_db, pool) = pool_with("rel_kinds", NPlusOne::default()).await;
    let (log, _guard) = crate::capture::capture();
    let s = pool.session().await.expect("session");

    // To-many.
    let languages = s
        .load(
            Language::query().order_by(Language::LANGUAGE_ID.asc()),
            Language::FILMS,
        )
        .await
        .expect("films");
    let titles: Vec<(String, Vec<String>)> = languages
        .iter()
        .map(|w| {
            (
                w.model.name.clone(),
                w.related.iter().map(|f| f.title.clone()).collect(),
            )
        })
        .collect();
    assert_eq!(
        titles,
        vec![
            (
                "English".into(),
                vec![
                    "Academy Dinosaur".into(),
                    "Ace Goldfinger".into(),
                    "Affair Prejudice".into()
                ]
            ),
            (
                "French".into(),
                vec!["Adaptation Holes".into(), "African Egg".into()]
            ),
            ("Klingon".into(), vec![]),
        ]
    );
    insta::assert_debug_snapshot!("to_many", statements(&log));

    // To-one: the languages are in the identity map now, so loading them costs nothing.
    let before = statements(&log).len();
    let films = s
        .load(Film::query().order_by(Film::FILM_ID.asc()), Film::LANGUAGE)
        .await
        .expect("languages");
    assert_eq!(statements(&log).len(), before + 1, "only the films' query");
    assert_eq!(
        films[2].related.as_ref().map(|l| l.name.as_str()),
        Some("French")
    );

    // Many-to-many and has-one, in a new session (nothing loaded): one statement each.
    let s2 = pool.session().await.expect("session");
    let before = statements(&log).len();
    let films = s2
        .load(
            Film::query().order_by(Film::FILM_ID.asc()),
            (
                Film::ACTORS.order_by(Actor::NAME.asc()),
                Film::DETAIL,
                Film::LANGUAGE,
            ),
        )
        .await
        .expect("actors");
    let sent = &statements(&log)[before..];
    assert_eq!(sent.len(), 4, "{sent:#?}");
    insta::assert_debug_snapshot!("many_to_many_has_one_belongs_to", sent);
    let (actors, detail, language) = &films[0].related;
    assert_eq!(
        actors.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(),
        vec!["Nick", "Penelope"]
    );
    assert!(
        detail
            .as_ref()
            .is_some_and(|d| d.synopsis.contains("dinosaur"))
    );
    assert_eq!(language.as_ref().map(|l| l.language_id), Some(1));
    assert!(films[4].related.1.is_none(), "no detail for the last film");
    assert!(films[4].related.0.is_empty());
}

#[tokio::test]
async fn nested_three_levels_is_three_statements_after_the_parents() {
    let (_db, pool) = pool_with("rel_nested", NPlusOne::default()).await;
    let (log, _guard) = crate::capture::capture();
    let s = pool.session().await.expect("session");
    let loaded = s
        .load(
            Language::query().filter(Language::NAME.eq("English")),
            Language::FILMS
                .order_by(Film::FILM_ID.asc())
                .with(Film::ACTORS.with(Actor::FILMS)),
        )
        .await
        .expect("nested");
    assert_eq!(statements(&log).len(), 4, "{:#?}", statements(&log));
    insta::assert_debug_snapshot!("nested", statements(&log));
    let english = &loaded[0];
    let academy = &english.related[0];
    assert_eq!(academy.model.title, "Academy Dinosaur");
    let penelope = academy
        .related
        .iter()
        .find(|a| a.model.name == "Penelope")
        .expect("penelope");
    let her_films: Vec<&str> = penelope.related.iter().map(|f| f.title.as_str()).collect();
    assert_eq!(her_films.len(), 2);
    // One row, one object: the same film loaded at two levels is the same row.
    assert!(her_films.contains(&"Academy Dinosaur"));

    // The result serialises for a JSON response.
    let json = serde_json::to_value(english).expect("json");
    assert_eq!(json["model"]["name"], "English");
    assert_eq!(json["related"][0]["model"]["title"], "Academy Dinosaur");
    assert!(json["related"][0]["related"][0]["related"].is_array());
}

#[tokio::test]
async fn a_self_referential_tree_takes_one_statement_per_level() {
    let (_db, pool) = pool_with("rel_tree", NPlusOne::default()).await;
    let (log, _guard) = crate::capture::capture();
    let s = pool.session().await.expect("session");
    let roots = s
        .load_tree(
            Category::query()
                .filter(Category::PARENT_ID.is_null())
                .order_by(Category::CATEGORY_ID.asc()),
            Category::CHILDREN,
        )
        .await
        .expect("tree");
    // Roots, then three levels of children (the last finds none).
    assert_eq!(statements(&log).len(), 4, "{:#?}", statements(&log));
    assert_eq!(roots[0].node.name, "Drama");
    assert_eq!(roots[0].children[0].node.name, "Family");
    assert_eq!(roots[0].children[0].children[0].node.name, "Animation");
    assert!(roots[1].children.is_empty());
    let json = serde_json::to_value(&roots[0]).expect("json");
    assert_eq!(
        json["children"][0]["children"][0]["node"]["name"],
        "Animation"
    );

    // The belongs-to side of the same foreign key: each category's parent.
    let with_parent = s
        .load(
            Category::query().order_by(Category::CATEGORY_ID.asc()),
            Category::PARENT,
        )
        .await
        .expect("parents");
    let parents: Vec<Option<&str>> = with_parent
        .iter()
        .map(|w| w.related.as_ref().map(|p| p.name.as_str()))
        .collect();
    assert_eq!(parents, vec![None, None, Some("Drama"), Some("Family")]);
}

#[tokio::test]
async fn a_composite_foreign_key_loads_both_ways() {
    let (_db, pool) = pool_with("rel_composite", NPlusOne::default()).await;
    let (log, _guard) = crate::capture::capture();
    let s = pool.session().await.expect("session");
    let rentals = s
        .load(
            Rental::query()
                .order_by(Rental::STORE_ID.asc())
                .order_by(Rental::RENTAL_NO.asc()),
            Rental::PAYMENTS.order_by(RentalPayment::AMOUNT.desc()),
        )
        .await
        .expect("payments");
    let amounts: Vec<Vec<i32>> = rentals
        .iter()
        .map(|w| w.related.iter().map(|p| p.amount).collect())
        .collect();
    assert_eq!(amounts, vec![vec![299, 99], vec![], vec![499]]);
    insta::assert_debug_snapshot!("composite", statements(&log));
    let s2 = pool.session().await.expect("session");
    let payments = s2
        .load(RentalPayment::query(), RentalPayment::RENTAL)
        .await
        .expect("rentals");
    assert!(payments.iter().all(|w| {
        w.related
            .as_ref()
            .is_some_and(|r| r.store_id == w.model.store_id)
    }));
}

#[tokio::test]
async fn a_relation_takes_filters_order_and_a_limit_per_parent() {
    let (_db, pool) = pool_with("rel_refine", NPlusOne::default()).await;
    let (log, _guard) = crate::capture::capture();
    let s = pool.session().await.expect("session");
    let languages = s
        .load(
            Language::query().order_by(Language::LANGUAGE_ID.asc()),
            Language::FILMS
                .filter(Film::TITLE.like("A%"))
                .order_by(Film::TITLE.desc())
                .limit_each(2),
        )
        .await
        .expect("refined");
    let titles: Vec<Vec<&str>> = languages
        .iter()
        .map(|w| w.related.iter().map(|f| f.title.as_str()).collect())
        .collect();
    assert_eq!(
        titles,
        vec![
            vec!["Affair Prejudice", "Ace Goldfinger"],
            vec!["African Egg", "Adaptation Holes"],
            vec![],
        ]
    );
    insta::assert_debug_snapshot!("refined", statements(&log));
}

#[tokio::test]
async fn a_loop_of_gets_is_reported_once_and_the_eager_version_never() {
    let (_db, pool) = pool_with("rel_n_plus_one", NPlusOne::Warn(3)).await;
    let (log, _guard) = crate::capture::capture();
    let s = pool.named_session("report").await.expect("session");
    let films = s.all(Film::query()).await.expect("films");
    // The N+1: one get per film for its detail row.
    for f in &films {
        s.get::<FilmDetail>(f.film_id).await.expect("detail");
    }
    let warnings = log.matching(Level::WARN, "N+1");
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(
        warnings[0].contains("report"),
        "names the session: {}",
        warnings[0]
    );
    assert!(
        warnings[0].contains("film_detail"),
        "names the statement: {}",
        warnings[0]
    );
    s.close().await.expect("close");

    // Eager: no warning.
    let eager = pool.session().await.expect("session");
    let loaded = eager
        .load(Film::query(), (Film::CATEGORY, Film::DETAIL))
        .await
        .expect("eager");
    assert_eq!(loaded.len(), 5);
    eager.close().await.expect("close");
    assert_eq!(log.matching(Level::WARN, "N+1").len(), 1);

    // Strict: a typed error.
    let (_db2, strict) = pool_with("rel_n_plus_one_strict", NPlusOne::Error(2)).await;
    let s = strict.session().await.expect("session");
    let mut result = Ok(None);
    for id in 1..=5 {
        result = s.get::<FilmDetail>(id).await;
        if result.is_err() {
            break;
        }
    }
    match result {
        Err(Error::NPlusOne { count, .. }) => assert_eq!(count, 3),
        other => panic!("expected the N+1 error: {other:?}"),
    }
}

#[tokio::test]
async fn a_parent_with_new_children_and_many_to_many_links_are_written() {
    let (db, pool) = pool_with("rel_writes", NPlusOne::default()).await;
    let s = pool.session().await.expect("session");
    let stored = s
        .insert_with(
            Language {
                language_id: 0,
                name: "Esperanto".into(),
            },
            Language::FILMS,
            (0..3).map(|i| Film {
                film_id: 0,
                title: format!("La Filmo {i}"),
                language_id: 0, // filled in from the language's generated key
                category_id: None,
            }),
        )
        .await
        .expect("insert_with");
    assert!(stored.model.language_id > 3);
    assert_eq!(stored.related.len(), 3);
    assert!(
        stored
            .related
            .iter()
            .all(|f| f.language_id == stored.model.language_id && f.film_id > 0)
    );
    assert_eq!(stored.related[2].title, "La Filmo 2");
    let nick = s.get::<Actor>(2).await.expect("get").expect("actor");
    for film in &stored.related[..2] {
        s.link(Film::ACTORS, film, &nick).await.expect("link");
    }
    s.link(Film::ACTORS, &stored.related[0], &nick)
        .await
        .expect("linking twice is nothing");
    assert!(
        s.unlink(Film::ACTORS, &stored.related[1], &nick)
            .await
            .expect("unlink")
    );
    s.commit().await.expect("commit");
    let monitor = db.connect().await.expect("monitor");
    let links: i64 = monitor
        .query_one(
            "SELECT count(*) FROM film_actor fa JOIN film f USING (film_id) WHERE f.title LIKE 'La Filmo%'",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(links, 1);
    let fresh = pool.session().await.expect("session");
    let esperanto = fresh
        .load(
            Language::query().filter(Language::NAME.eq("Esperanto")),
            Language::FILMS.with(Film::ACTORS),
        )
        .await
        .expect("reload");
    assert_eq!(esperanto[0].related.len(), 3);
    assert_eq!(esperanto[0].related[0].related.len(), 1);
}

#[tokio::test]
async fn a_to_one_relation_can_be_joined_into_one_statement() {
    let (_db, pool) = pool_with("rel_joined", NPlusOne::default()).await;
    let (log, _guard) = crate::capture::capture();
    let s = pool.session().await.expect("session");
    let films = s
        .load_joined(Film::query().order_by(Film::FILM_ID.asc()), Film::LANGUAGE)
        .await
        .expect("joined");
    assert_eq!(statements(&log).len(), 1, "{:#?}", statements(&log));
    insta::assert_debug_snapshot!("joined", statements(&log));
    let names: Vec<&str> = films
        .iter()
        .map(|w| w.related.as_ref().map_or("-", |l| l.name.as_str()))
        .collect();
    assert_eq!(
        names,
        vec!["English", "English", "French", "English", "French"]
    );
    // A self-referential one: the table joined to itself.
    let categories = s
        .load_joined(
            Category::query().order_by(Category::CATEGORY_ID.asc()),
            Category::PARENT,
        )
        .await
        .expect("self join");
    let parents: Vec<Option<&str>> = categories
        .iter()
        .map(|w| w.related.as_ref().map(|p| p.name.as_str()))
        .collect();
    assert_eq!(parents, vec![None, None, Some("Drama"), Some("Family")]);
    // The joined rows are in the identity map: loading them again costs nothing.
    let before = statements(&log).len();
    let again = s
        .load(Film::query().order_by(Film::FILM_ID.asc()), Film::LANGUAGE)
        .await
        .expect("load");
    assert_eq!(statements(&log).len(), before + 1);
    assert_eq!(again.len(), 5);
}
