//! `actor-orm generate` against a live schema (tests/generated/dvd.sql): its output is pinned
//! with insta, and must equal the fixture the integration tests compile and run
//! (tests/generated/dvd/, checked by `cargo fmt --check` too). `UPDATE_GENERATED=1` rewrites the
//! fixture after a deliberate change.

use std::path::PathBuf;

use actor_orm_cli::{catalog, generate};

const SCHEMA: &str = include_str!("../../tests/generated/dvd.sql");

#[tokio::test]
async fn generate_writes_the_models_of_a_live_schema() {
    let db = actor_orm::testing::test_database("cli_generate")
        .await
        .expect("database");
    let client = db.connect().await.expect("connect");
    client.batch_execute(SCHEMA).await.expect("schema");
    let pool = actor_orm::Pool::builder(db.config())
        .max_size(1)
        .build()
        .await
        .expect("pool");
    let session = pool.session().await.expect("session");
    let catalog = catalog::read(&session, "public").await.expect("catalog");
    let files = generate::generate(&catalog, "public");
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "actor.rs",
            "enums.rs",
            "film.rs",
            "film_actor.rs",
            "film_list.rs",
            "language.rs",
            "mod.rs",
            "payment.rs",
            "rating_counts.rs",
            "rental_log.rs",
            "store.rs",
            "unmapped.rs",
        ]
    );
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/generated/dvd");
    let update = std::env::var_os("UPDATE_GENERATED").is_some();
    for f in &files {
        insta::assert_snapshot!(f.name.clone(), f.text);
        let path = fixture.join(&f.name);
        if update {
            std::fs::create_dir_all(&fixture).expect("fixture dir");
            std::fs::write(&path, &f.text).expect("write fixture");
        }
        let pinned = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            pinned,
            f.text,
            "{} differs from the generated text; run with UPDATE_GENERATED=1",
            path.display()
        );
    }
}
