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

    let session = pool.session().await?;
    session
        .raw_execute(ddl::drop_table::<User>(), vec![])
        .await?;
    session
        .raw_execute(ddl::create_table::<User>(), vec![])
        .await?;
    session.commit().await?;
    session.close().await?;
    let without_email = tour(&pool).await?;
    println!("users without an email: {without_email:?}");

    println!("pool: {:?}", pool.stats().await?);
    pool.close(Duration::from_secs(5)).await?;
    cluster.stop();
    println!("done");
    Ok(())
}

/// Writes two users, then gives one an email; the users still without one.
async fn tour(pool: &Pool) -> Result<Vec<User>> {
    // One session per unit of work: an actor with its own identity map and transaction.
    let session = pool.session().await?;
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
    let mut ann = session
        .get::<User>(ann.id)
        .await?
        .ok_or_else(|| Error::NotFound {
            table: "quickstart_users".into(),
            key: ann.id.to_string(),
        })?;
    ann.email = Some("ann@example.com".into());
    session.save(ann.clone()).await?; // UPDATE … SET "email" = $1 WHERE "id" = $2
    let without_email = session
        .all(User::query().filter(User::EMAIL.is_null()))
        .await?;
    session.commit().await?;
    session.close().await?;
    Ok(without_email)
}

#[cfg(test)]
mod tests {
    use super::*;

    // In the test sandbox: the table made from the model once per test binary, and every
    // session of the test inside one transaction that is rolled back when it ends.
    #[actor_orm::test(models(User))]
    async fn the_tour_leaves_bob_without_an_email(pool: Pool) {
        let without_email = tour(&pool).await.expect("tour");
        assert_eq!(
            without_email
                .iter()
                .map(|u| u.name.as_str())
                .collect::<Vec<_>>(),
            ["bob"]
        );
    }
}
