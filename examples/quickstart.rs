//! The quickstart: create a table, write a row, read it back.
//!
//! `cargo run --example quickstart` uses `DATABASE_URL` when it is set, and otherwise starts a
//! throwaway PostgreSQL cluster of its own, removed again when the program ends.

use actor_orm::testing::Cluster;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = Cluster::from_env()?;
    match cluster.dir() {
        Some(dir) => println!("started a throwaway PostgreSQL in {}", dir.display()),
        None => println!("using the server named by DATABASE_URL"),
    }
    let client = cluster.connect_to(None).await?;

    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS quickstart_users (
                 id bigserial PRIMARY KEY,
                 name text NOT NULL,
                 email text
             )",
        )
        .await?;
    println!("created table quickstart_users");

    let row = client
        .query_one(
            "INSERT INTO quickstart_users (name, email) VALUES ($1, $2) RETURNING id",
            &[&"ann", &Some("ann@example.com")],
        )
        .await?;
    let id: i64 = row.get(0);
    println!("inserted ann with id {id}");

    let row = client
        .query_one(
            "SELECT name, email FROM quickstart_users WHERE id = $1",
            &[&id],
        )
        .await?;
    let (name, email): (String, Option<String>) = (row.get(0), row.get(1));
    println!("read back id {id}: name = {name:?}, email = {email:?}");

    drop(client);
    cluster.stop();
    println!("done");
    Ok(())
}
