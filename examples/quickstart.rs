//! The quickstart: define a model, create its table, write rows, read them back.
//!
//! `cargo run --example quickstart` uses `DATABASE_URL` when it is set, and otherwise starts a
//! throwaway PostgreSQL cluster of its own, removed again when the program ends.

use actor_orm::prelude::*;
use actor_orm::testing::Cluster;
use actor_orm::{StatementMode, ddl};

#[derive(Model, Clone, Debug, PartialEq)]
#[orm(table_name = "quickstart_users")]
struct User {
    #[orm(primary_key, auto_increment)]
    id: i64,
    name: String,
    email: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = Cluster::from_env()?;
    match cluster.dir() {
        Some(dir) => println!("started a throwaway PostgreSQL in {}", dir.display()),
        None => println!("using the server named by DATABASE_URL"),
    }
    let conn = Connection::new(cluster.connect_to(None).await?, StatementMode::Prepared);
    conn.batch(&ddl::create_table::<User>()).await?;
    println!("created table quickstart_users");

    let mut session = SessionState::new();
    let ann = session
        .insert(
            &conn,
            User {
                id: 0,
                name: "ann".into(),
                email: Some("ann@example.com".into()),
            },
        )
        .await?;
    println!("inserted {ann:?}");
    session.add(User {
        id: 0,
        name: "bob".into(),
        email: None,
    })?;
    session.commit(&conn).await?;
    println!("added bob and committed");

    let found = session.get::<User>(&conn, ann.id).await?;
    println!("get({}) = {found:?}", ann.id);
    let without_email = session
        .all(&conn, User::query().filter(User::EMAIL.is_null()))
        .await?;
    println!("users without an email: {without_email:?}");
    session.commit(&conn).await?;

    drop(conn);
    cluster.stop();
    println!("done");
    Ok(())
}
