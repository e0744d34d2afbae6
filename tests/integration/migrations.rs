//! Versioned migrations: applied once and in order however many instances run them, checked
//! against the history's checksums, rolled back whole when one fails, reverted by their down SQL.

use std::time::Duration;

use actor_orm::{Error, Migrations, Pool};

fn set(files: &[(&str, &str)]) -> Migrations {
    Migrations::from_files(
        files
            .iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect(),
    )
    .expect("migrations")
}

/// Three migrations, each counting its runs in `runs` (created by the first).
fn counted() -> Migrations {
    set(&[
        (
            "1_runs.up.sql",
            "CREATE TABLE runs (version int NOT NULL); INSERT INTO runs VALUES (1);
             SELECT pg_sleep(0.1);",
        ),
        ("1_runs.down.sql", "DROP TABLE runs;"),
        (
            "2_items.up.sql",
            "CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL);
             INSERT INTO runs VALUES (2); SELECT pg_sleep(0.1);",
        ),
        (
            "2_items.down.sql",
            "DROP TABLE items; DELETE FROM runs WHERE version = 2;",
        ),
        (
            "3_items_label.up.sql",
            "-- actor-orm: no-transaction\nCREATE INDEX CONCURRENTLY items_label ON items (label)",
        ),
        ("3_items_label.down.sql", "DROP INDEX items_label;"),
    ])
}

async fn tables(client: &tokio_postgres::Client) -> Vec<String> {
    client
        .query(
            "SELECT relname::text FROM pg_class WHERE relnamespace = 'public'::regnamespace \
             AND relkind IN ('r', 'i') ORDER BY 1",
            &[],
        )
        .await
        .expect("catalog")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn migrations_apply_in_order_once_and_revert() {
    let db = actor_orm::testing::test_database("migrate_cycle")
        .await
        .expect("database");
    let monitor = db.connect().await.expect("monitor");
    let pool = crate::pool_on(&db, |b| b).await;
    let m = counted();
    assert_eq!(pool.migrate(&m).await.expect("up"), vec![1, 2, 3]);
    assert_eq!(pool.migrate(&m).await.expect("again"), Vec::<i64>::new());
    let status = pool.migration_status(&m).await.expect("status");
    assert!(status.iter().all(|s| s.applied && !s.edited), "{status:?}");
    let runs: i64 = monitor
        .query_one("SELECT count(*) FROM runs", &[])
        .await
        .expect("runs")
        .get(0);
    assert_eq!(runs, 2);
    assert!(tables(&monitor).await.contains(&"items_label".to_owned()));
    // The pool's sessions use the new schema.
    let s = pool.session().await.expect("session");
    s.raw_execute("INSERT INTO items VALUES (1, 'a')", vec![])
        .await
        .expect("insert");
    s.commit().await.expect("commit");
    s.close().await.expect("close");

    assert_eq!(pool.migrate_down(&m, 2).await.expect("down"), vec![3, 2]);
    let left = tables(&monitor).await;
    assert!(!left.contains(&"items".to_owned()), "{left:?}");
    assert!(left.contains(&"runs".to_owned()), "{left:?}");
    assert_eq!(pool.migrate(&m).await.expect("up again"), vec![2, 3]);
    assert_eq!(
        pool.migrate_down(&m, 10).await.expect("all down"),
        vec![3, 2, 1]
    );
    assert_eq!(
        tables(&monitor).await,
        vec!["actor_orm_migrations", "actor_orm_migrations_pkey"]
    );
}

#[tokio::test]
async fn an_edited_migration_is_refused_and_a_failing_one_rolls_back_whole() {
    let db = actor_orm::testing::test_database("migrate_checks")
        .await
        .expect("database");
    let monitor = db.connect().await.expect("monitor");
    let pool = crate::pool_on(&db, |b| b).await;
    let first = set(&[("1_a.up.sql", "CREATE TABLE a (id int);")]);
    pool.migrate(&first).await.expect("up");

    // Edited after it was applied: refused before anything runs.
    let edited = set(&[
        ("1_a.up.sql", "CREATE TABLE a (id bigint);"),
        ("2_b.up.sql", "CREATE TABLE b (id int);"),
    ]);
    let err = pool.migrate(&edited).await.expect_err("edited");
    assert!(
        matches!(&err, Error::Migration { version: 1, reason, .. } if reason.contains("edited")),
        "{err:?}"
    );
    assert!(!tables(&monitor).await.contains(&"b".to_owned()));
    let status = pool.migration_status(&edited).await.expect("status");
    assert!(status[0].edited && !status[1].applied, "{status:?}");

    // A migration failing half-way: its first statement is rolled back with it, its history
    // row never written; the one before it stays applied.
    let failing = set(&[
        ("1_a.up.sql", "CREATE TABLE a (id int);"),
        ("2_b.up.sql", "CREATE TABLE b (id int);"),
        (
            "3_c.up.sql",
            "CREATE TABLE c (id int); INSERT INTO c VALUES (1); SELECT 1 / 0;",
        ),
    ]);
    let err = pool.migrate(&failing).await.expect_err("fails");
    assert!(
        matches!(&err, Error::Migration { version: 3, reason, .. } if reason.contains("22012")),
        "{err:?}"
    );
    let now = tables(&monitor).await;
    assert!(
        now.contains(&"b".to_owned()) && !now.contains(&"c".to_owned()),
        "{now:?}"
    );
    let versions: Vec<i64> = monitor
        .query("SELECT version FROM actor_orm_migrations ORDER BY 1", &[])
        .await
        .expect("history")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2]);

    // Applied, then its file removed: refused too.
    let gone = set(&[("2_b.up.sql", "CREATE TABLE b (id int);")]);
    let err = pool.migrate(&gone).await.expect_err("missing");
    assert!(
        matches!(&err, Error::Migration { version: 1, .. }),
        "{err:?}"
    );
    // No down file: a typed error, nothing reverted.
    let err = pool.migrate_down(&failing, 1).await.expect_err("no down");
    assert!(
        matches!(&err, Error::Migration { version: 2, .. }),
        "{err:?}"
    );
}

/// The files of `tests/migrations`, embedded at compile time.
#[tokio::test]
async fn embedded_migrations_apply_too() {
    let m = actor_orm::embed_migrations!("tests/migrations").expect("embedded");
    let names: Vec<_> = m
        .list()
        .iter()
        .map(|m| (m.version, m.no_transaction))
        .collect();
    assert_eq!(names, vec![(1, false), (2, true)]);
    let db = actor_orm::testing::test_database("migrate_embedded")
        .await
        .expect("database");
    let pool = crate::pool_on(&db, |b| b).await;
    assert_eq!(pool.migrate(&m).await.expect("up"), vec![1, 2]);
    assert_eq!(pool.migrate_down(&m, 2).await.expect("down"), vec![2, 1]);
}

const WORKER_URL: &str = "ACTOR_ORM_MIGRATE_WORKER_URL";

#[tokio::test]
#[ignore = "a worker process of four_processes_migrate_at_once, which runs it"]
async fn migrate_worker() {
    let Ok(url) = std::env::var(WORKER_URL) else {
        return;
    };
    let pool = Pool::builder(url.as_str()).build().await.expect("pool");
    let applied = pool.migrate(&counted()).await.expect("migrate");
    println!("applied {applied:?}");
}

/// 4 processes start together and migrate the same database: none fails, and each migration
/// runs exactly once (each counts its runs).
#[tokio::test]
async fn four_processes_migrate_at_once() {
    let db = actor_orm::testing::test_database("migrate_race")
        .await
        .expect("database");
    // The server itself: the migrator holds a session-level lock.
    let Some(url) = crate::url_of(db.direct_config()) else {
        return;
    };
    let outputs = crate::run_workers("migrations::migrate_worker", 4, move |_| {
        vec![(WORKER_URL, url.clone())]
    })
    .await;
    let mut applied_by = Vec::new();
    for out in &outputs {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "a worker failed: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        applied_by.extend(
            stdout
                .lines()
                .filter(|l| l.starts_with("applied"))
                .map(str::to_owned),
        );
    }
    let monitor = db.connect().await.expect("monitor");
    let runs: Vec<i32> = monitor
        .query("SELECT version FROM runs ORDER BY 1", &[])
        .await
        .expect("runs")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(runs, vec![1, 2], "each migration ran once: {applied_by:?}");
    let history: i64 = monitor
        .query_one("SELECT count(*) FROM actor_orm_migrations", &[])
        .await
        .expect("history")
        .get(0);
    assert_eq!(history, 3);
}

/// Behind a transaction pooler the migrator's lock would not hold: refused with a typed error
/// naming `direct_at`, and working with it.
#[tokio::test]
async fn behind_pgbouncer_the_migrator_needs_the_server() {
    let db = actor_orm::testing::test_database("migrate_pooled")
        .await
        .expect("database");
    let server = db.direct_config().clone();
    let bouncer = match tokio::task::spawn_blocking(move || {
        actor_orm::testing::PgBouncer::start(&server, actor_orm::testing::PgBouncerOptions::new())
    })
    .await
    .expect("join")
    {
        Ok(b) => b,
        Err(e) => {
            eprintln!("skipped: this test needs PgBouncer: {e}");
            return;
        }
    };
    let through = Pool::builder(bouncer.config_for(db.name()))
        .build()
        .await
        .expect("pool");
    let err = through.migrate(&counted()).await.expect_err("refused");
    assert!(
        matches!(&err, Error::Config(t) if t.contains("direct_at")),
        "{err:?}"
    );
    let pool = Pool::builder(bouncer.config_for(db.name()))
        .direct_at(db.direct_config())
        .acquire_timeout(Duration::from_secs(10))
        .build()
        .await
        .expect("pool");
    assert_eq!(pool.migrate(&counted()).await.expect("up"), vec![1, 2, 3]);
}

/// Three versions of a set of models. v1 → v2: an enum label added, a table dropped and one
/// created, columns added, a varchar widened, an integer made bigint, a default set, an index
/// dropped and a composite one added. v2 → v3: a column dropped and one added with its type (a
/// rename?), a unique constraint dropped, a column made NOT NULL, a foreign key dropped and one
/// added, a unique index added.
mod v1 {
    use actor_orm::{DbEnum, Model};

    #[derive(DbEnum, Clone, Copy, Debug, PartialEq)]
    #[orm(type_name = "mood")]
    pub enum Mood {
        Happy,
        Sad,
    }

    #[derive(Model, Clone, Debug)]
    #[orm(table_name = "authors")]
    pub struct Author {
        #[orm(primary_key, auto_increment)]
        pub id: i64,
        pub name: String,
        #[orm(unique, max_length = 100)]
        pub email: String,
    }

    #[derive(Model, Clone, Debug)]
    #[orm(table_name = "posts")]
    pub struct Post {
        #[orm(primary_key, auto_increment)]
        pub id: i64,
        #[orm(references = Author)]
        pub author_id: i64,
        #[orm(index)]
        pub title: Option<String>,
        pub mood: Mood,
        pub score: i32,
    }

    #[derive(Model, Clone, Debug)]
    #[orm(table_name = "drafts")]
    pub struct Draft {
        #[orm(primary_key)]
        pub id: i64,
        pub body: String,
    }

    pub fn models() -> actor_orm::SchemaModels {
        actor_orm::SchemaModels::new()
            .db_enum::<Mood>()
            .model::<Author>()
            .model::<Post>()
            .model::<Draft>()
    }
}

mod v2 {
    use actor_orm::{DbEnum, Model};

    #[derive(DbEnum, Clone, Copy, Debug, PartialEq)]
    #[orm(type_name = "mood")]
    pub enum Mood {
        Happy,
        Sad,
        Meh,
    }

    #[derive(Model, Clone, Debug)]
    #[orm(table_name = "authors")]
    pub struct Author {
        #[orm(primary_key, auto_increment)]
        pub id: i64,
        #[orm(default = "'anonymous'")]
        pub name: String,
        #[orm(unique, max_length = 200)]
        pub email: String,
        pub bio: Option<String>,
    }

    #[derive(Model, Clone, Debug)]
    #[orm(table_name = "posts", index(columns = "author_id, mood"))]
    pub struct Post {
        #[orm(primary_key, auto_increment)]
        pub id: i64,
        #[orm(references = Author)]
        pub author_id: i64,
        pub title: Option<String>,
        pub mood: Mood,
        pub score: i64,
        #[orm(default = "false")]
        pub published: bool,
    }

    #[derive(Model, Clone, Debug)]
    #[orm(table_name = "comments")]
    pub struct Comment {
        #[orm(primary_key, auto_increment)]
        pub id: i64,
        #[orm(references = Post)]
        pub post_id: i64,
        pub body: String,
    }

    pub fn models() -> actor_orm::SchemaModels {
        actor_orm::SchemaModels::new()
            .db_enum::<Mood>()
            .model::<Author>()
            .model::<Post>()
            .model::<Comment>()
    }
}

mod v3 {
    use actor_orm::Model;

    pub use super::v2::Mood;

    #[derive(Model, Clone, Debug)]
    #[orm(table_name = "authors")]
    pub struct Author {
        #[orm(primary_key, auto_increment)]
        pub id: i64,
        #[orm(default = "'anonymous'")]
        pub name: String,
        #[orm(max_length = 200)]
        pub email: String,
        pub nickname: Option<String>,
    }

    #[derive(Model, Clone, Debug)]
    #[orm(table_name = "posts", index(columns = "author_id, mood"))]
    pub struct Post {
        #[orm(primary_key, auto_increment)]
        pub id: i64,
        #[orm(references = Author)]
        pub author_id: i64,
        pub title: String,
        pub mood: Mood,
        pub score: i64,
        #[orm(default = "false")]
        pub published: bool,
    }

    #[derive(Model, Clone, Debug)]
    #[orm(
        table_name = "comments",
        index(columns = "post_id, body", unique = true, name = "comments_once")
    )]
    pub struct Comment {
        #[orm(primary_key, auto_increment)]
        pub id: i64,
        pub post_id: i64,
        #[orm(references = Author)]
        pub author_id: i64,
        pub body: String,
    }

    pub fn models() -> actor_orm::SchemaModels {
        actor_orm::SchemaModels::new()
            .db_enum::<Mood>()
            .model::<Author>()
            .model::<Post>()
            .model::<Comment>()
    }
}

/// The catalog of a database's public schema, as comparable lines: enum labels in order, tables'
/// columns (type, nullability, default, identity), constraints and indexes.
async fn catalog(client: &tokio_postgres::Client) -> Vec<String> {
    let sql = "
        SELECT 'enum ' || t.typname || ': ' || string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
          FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
         WHERE t.typnamespace = 'public'::regnamespace GROUP BY t.typname
        UNION ALL
        SELECT format('column %s.%s %s null=%s default=%s identity=%s', c.relname, a.attname,
                      format_type(a.atttypid, a.atttypmod), NOT a.attnotnull,
                      pg_get_expr(d.adbin, d.adrelid), a.attidentity)
          FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
          LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
           AND c.relname <> 'actor_orm_migrations'
        UNION ALL
        SELECT format('constraint %s on %s: %s', k.conname, c.relname, pg_get_constraintdef(k.oid))
          FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
         WHERE c.relnamespace = 'public'::regnamespace AND c.relname <> 'actor_orm_migrations'
        UNION ALL
        SELECT format('index %s', pg_get_indexdef(i.indexrelid))
          FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
         WHERE c.relnamespace = 'public'::regnamespace AND c.relname <> 'actor_orm_migrations'
        ORDER BY 1";
    client
        .query(sql, &[])
        .await
        .expect("catalog")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Generates the migration from the database's schema to `models`, writes it into `dir` and
/// applies every migration there.
async fn step(
    pool: &Pool,
    models: &actor_orm::SchemaModels,
    dir: &std::path::Path,
    name: &str,
) -> actor_orm::GeneratedMigration {
    let m = pool
        .generate_migration(models)
        .await
        .expect("generate")
        .expect("a change");
    m.write_to(dir, name).expect("write");
    pool.migrate(&Migrations::from_dir(dir).expect("read"))
        .await
        .expect("apply");
    assert!(
        pool.generate_migration(models)
            .await
            .expect("again")
            .is_none(),
        "after {name} the models and the database agree"
    );
    m
}

#[tokio::test]
async fn generated_migrations_take_v1_to_v3_and_back() {
    let dir = std::env::temp_dir().join(format!("actor-orm-migrations-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let db = actor_orm::testing::test_database("migrate_generated")
        .await
        .expect("database");
    let pool = crate::pool_on(&db, |b| b).await;
    let monitor = db.connect().await.expect("monitor");
    let first = step(&pool, &v1::models(), &dir, "v1").await;
    let v1_catalog = catalog(&monitor).await;
    let second = step(&pool, &v2::models(), &dir, "v2").await;
    let third = step(&pool, &v3::models(), &dir, "v3").await;
    let migrated = catalog(&monitor).await;
    insta::assert_snapshot!("generated_v1_up", first.up);
    insta::assert_snapshot!("generated_v2_up", second.up);
    insta::assert_snapshot!("generated_v2_down", second.down);
    insta::assert_snapshot!("generated_v3_up", third.up);
    insta::assert_snapshot!("generated_v3_down", third.down);

    // A fresh database generated straight to v3 has the same catalog.
    let fresh = actor_orm::testing::test_database("migrate_fresh")
        .await
        .expect("database");
    let fresh_pool = crate::pool_on(&fresh, |b| b).await;
    let fresh_dir = dir.join("fresh");
    step(&fresh_pool, &v3::models(), &fresh_dir, "v3").await;
    let fresh_monitor = fresh.connect().await.expect("monitor");
    assert_eq!(migrated, catalog(&fresh_monitor).await);

    // Down twice: the v1 catalog again.
    let all = Migrations::from_dir(&dir).expect("read");
    assert_eq!(pool.migrate_down(&all, 2).await.expect("down"), vec![3, 2]);
    assert_eq!(catalog(&monitor).await, v1_catalog);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The `migrate` commands (as the `actor-orm` binary and an application's own migrate binary run
/// them): new, generate (with the models), status, up, down.
#[tokio::test]
async fn the_migrate_commands_do_the_workflow() {
    let dir = std::env::temp_dir().join(format!("actor-orm-migrate-cmd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let db = actor_orm::testing::test_database("migrate_commands")
        .await
        .expect("database");
    let Some(url) = crate::url_of(db.direct_config()) else {
        return;
    };
    let run = |words: &[&str], models: Option<&actor_orm::SchemaModels>| {
        let mut args: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
        args.extend([
            "--url".into(),
            url.clone(),
            "--dir".into(),
            dir.display().to_string(),
        ]);
        let models = models.cloned();
        async move { actor_orm::migrate_command::run(args.into_iter(), models.as_ref()).await }
    };
    let out = run(&["new", "by_hand"], None).await.expect("new");
    assert!(out.contains("0001_by_hand.up.sql"), "{out}");
    std::fs::write(
        dir.join("0001_by_hand.up.sql"),
        "CREATE TABLE notes (id int);",
    )
    .expect("edit");
    std::fs::write(dir.join("0001_by_hand.down.sql"), "DROP TABLE notes;").expect("edit");
    let err = run(&["generate", "v1"], None).await.expect_err("no models");
    assert!(err.contains("models"), "{err}");
    let out = run(&["up"], None).await.expect("up");
    assert!(out.contains("applied 1"), "{out}");
    let out = run(&["generate", "v1"], Some(&v1::models()))
        .await
        .expect("generate");
    assert!(out.contains("0002_v1.up.sql"), "{out}");
    let out = run(&["status"], None).await.expect("status");
    assert!(out.contains("by_hand") && out.contains("pending"), "{out}");
    let out = run(&["up"], None).await.expect("up");
    assert!(out.contains("applied 1"), "{out}");
    let out = run(&["generate", "again"], Some(&v1::models()))
        .await
        .expect("generate");
    assert!(out.contains("nothing to write"), "{out}");
    let out = run(&["down", "--steps", "2"], None).await.expect("down");
    assert!(out.contains("[2, 1]"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
