//! The quickstart: define a model, create its table, then write and read rows through a pool and
//! its sessions.
//!
//! `cargo run --example quickstart` uses `DATABASE_URL` when it is set, and otherwise starts a
//! throwaway PostgreSQL cluster of its own, removed again when the program ends.

use std::time::Duration;

use actor_orm::ddl;
use actor_orm::prelude::*;
use actor_orm::testing::Cluster;

#[derive(Model, Clone, Debug, PartialEq)]
#[orm(table_name = "quickstart_users")]
struct User {
    #[orm(primary_key, auto_increment)]
    id: i64,
    name: String,
    email: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = Cluster::from_env()?;
    match cluster.dir() {
        Some(dir) => println!("started a throwaway PostgreSQL in {}", dir.display()),
        None => println!("using the server named by DATABASE_URL"),
    }

    // One pool per program: a supervisor actor that owns every connection.
    let pool = Pool::builder(cluster.config())
        .max_size(4)
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .await?;

    // One session per unit of work: an actor with its own identity map and transaction.
    let session = pool.session().await?;
    session
        .raw_execute(ddl::drop_table::<User>(), vec![])
        .await?;
    session
        .raw_execute(ddl::create_table::<User>(), vec![])
        .await?;
    let ann = session
        .insert(User {
            id: 0,
            name: "ann".into(),
            email: None,
        })
        .await?;
    session
        .add(User {
            id: 0,
            name: "bob".into(),
            email: None,
        })
        .await?;
    session.commit().await?;
    println!("inserted {ann:?} and added bob");
    session.close().await?; // or just drop it: the connection goes back either way

    let session = pool.session().await?;
    let mut ann = session.get::<User>(ann.id).await?.ok_or("ann is missing")?;
    ann.email = Some("ann@example.com".into());
    session.save(ann.clone()).await?; // UPDATE … SET "email" = $1 WHERE "id" = $2
    let without_email = session
        .all(User::query().filter(User::EMAIL.is_null()))
        .await?;
    println!("users without an email: {without_email:?}");
    session.commit().await?;
    session.close().await?;

    println!("pool: {:?}", pool.stats().await?);
    pool.close(Duration::from_secs(5)).await?;
    cluster.stop();
    println!("done");
    Ok(())
}
