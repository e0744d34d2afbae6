//! The failure this project exists to remove: an async service kept one ORM session for its whole
//! life, and request B's commit wrote request A's half-built objects.
//!
//! Two concurrent requests with delays: A adds an order line, waits (say, for a payment
//! service), then adds a second line and commits; B adds its own line and commits while A waits.
//! With one session per request (actor-orm's model) each commit holds exactly its own objects.
//! The same steps on one shared session show the mix-up, for contrast.
//!
//! `cargo run --example shared_session_mixup`: on `DATABASE_URL` when set, else a throwaway
//! PostgreSQL.

use std::time::Duration;

use actor_orm::ddl;
use actor_orm::prelude::*;
use actor_orm::testing::Cluster;
use tokio::sync::oneshot;

#[derive(Model, Clone, Debug)]
#[orm(table_name = "mixup_lines")]
struct Line {
    #[orm(primary_key, auto_increment)]
    id: i64,
    request: String,
    item: String,
}

fn line(request: &str, item: &str) -> Line {
    Line {
        id: 0,
        request: request.into(),
        item: item.into(),
    }
}

async fn request_a(session: Session, payment_done: oneshot::Receiver<()>) -> Result<()> {
    session.add(line("A", "a1")).await?;
    let _ = payment_done.await; // A is slow; B runs meanwhile
    session.add(line("A", "a2")).await?;
    session.commit().await
}

async fn request_b(session: Session) -> Result<()> {
    session.add(line("B", "b1")).await?;
    session.commit().await
}

async fn committed(pool: &Pool) -> Result<Vec<String>> {
    let s = pool.session().await?;
    let rows = s.all(Line::query().order_by(Line::ITEM.asc())).await?;
    s.close().await?;
    Ok(rows.into_iter().map(|l| l.item).collect())
}

/// What the table holds after B's commit, and after A's.
async fn scenario(
    pool: &Pool,
    shared: bool,
) -> std::result::Result<(Vec<String>, Vec<String>), Box<dyn std::error::Error>> {
    let clear = pool.session().await?;
    clear.raw_execute("DELETE FROM mixup_lines", vec![]).await?;
    clear.commit().await?;
    clear.close().await?;

    let one = pool.session().await?;
    let (session_a, session_b) = if shared {
        (one.clone(), one.clone())
    } else {
        (pool.session().await?, pool.session().await?)
    };
    let (pay, payment_done) = oneshot::channel();
    let a = tokio::spawn(request_a(session_a, payment_done));
    tokio::time::sleep(Duration::from_millis(50)).await;
    request_b(session_b).await?;
    let after_b = committed(pool).await?;
    let _ = pay.send(());
    a.await??;
    let after_a = committed(pool).await?;
    let label = if shared {
        "one shared session     "
    } else {
        "one session per request"
    };
    println!("{label}: after B's commit the table holds {after_b:?}; after A's, {after_a:?}");
    Ok((after_b, after_a))
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let cluster = Cluster::from_env()?;
    let pool = Pool::builder(cluster.config()).max_size(4).build().await?;
    let setup = pool.session().await?;
    setup.raw_execute(ddl::drop_table::<Line>(), vec![]).await?;
    setup
        .raw_execute(ddl::create_table::<Line>(), vec![])
        .await?;
    setup.commit().await?;
    setup.close().await?;

    scenario(&pool, false).await?;
    scenario(&pool, true).await?;
    println!("with a session per request, B's commit holds only b1: A's pending a1 is A's alone");

    pool.close(Duration::from_secs(5)).await?;
    cluster.stop();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The sandbox: every session of the test inside one transaction, rolled back at the end.
    #[actor_orm::test(models(Line))]
    async fn each_request_commits_exactly_its_own_lines(pool: Pool) {
        let (after_b, after_a) = scenario(&pool, false).await.expect("scenario");
        assert_eq!(after_b, ["b1"], "B's commit holds only B's line");
        assert_eq!(after_a, ["a1", "a2", "b1"]);
    }

    #[actor_orm::test(models(Line))]
    async fn one_shared_session_mixes_them_up(pool: Pool) {
        let (after_b, _) = scenario(&pool, true).await.expect("scenario");
        assert_eq!(
            after_b,
            ["a1", "b1"],
            "B's commit wrote A's half-built line"
        );
    }
}
