//! Workload 16: what a test costs. The same test body (a session, one insert, a commit, a
//! count) in the sandbox of `#[actor_orm::test]` — one outer transaction, the database reused
//! from the free list — in a database of the test's own (`isolation = "database"`, a clone of
//! the template), and in a database made the plain way (`testing::test_database`, the table
//! created, a pool built).

use std::time::{Duration, Instant};

use actor_orm::prelude::*;
use actor_orm::testing::{Isolation, Sandbox};

use crate::{Res, Results, median};

const W: &str = "16. one test: database, pool, insert, commit, count, end";
const SANDBOXED: &str = "actor-orm #[actor_orm::test] (transaction)";
const OWN: &str = "actor-orm #[actor_orm::test] (isolation = \"database\")";
const PLAIN: &str = "a test database made by hand (create, schema, pool)";
const TRIALS: usize = 9;

#[derive(Model, Clone, Debug)]
#[orm(table_name = "sandbox_notes")]
struct Note {
    #[orm(primary_key, auto_increment)]
    id: i64,
    body: String,
}

fn sandbox() -> Sandbox {
    Sandbox::new().models(actor_orm::SchemaModels::new().model::<Note>())
}

async fn body(pool: &Pool) -> Res<()> {
    let s = pool.session().await?;
    s.insert(Note {
        id: 0,
        body: "a note".into(),
    })
    .await?;
    s.commit().await?;
    assert_eq!(s.count(Note::query()).await?, 1);
    s.close().await?;
    Ok(())
}

async fn in_sandbox(isolation: Isolation) -> Res<()> {
    let sb = sandbox().isolation(isolation).open().await?;
    body(sb.pool()).await?;
    sb.finish().await;
    Ok(())
}

async fn by_hand() -> Res<()> {
    let db = actor_orm::testing::test_database("compare_test").await?;
    db.connect()
        .await?
        .batch_execute(&actor_orm::ddl::create_table::<Note>())
        .await?;
    let pool = Pool::builder(db.config()).build().await?;
    body(&pool).await?;
    pool.close(Duration::from_secs(5)).await?;
    Ok(())
}

pub(crate) async fn round(r: &mut Results) -> Res<()> {
    // The template is built once per process, as in a test binary: not a test's cost.
    in_sandbox(Isolation::Transaction).await?;
    let mut times: [Vec<f64>; 3] = Default::default();
    for _ in 0..TRIALS {
        for (i, times) in times.iter_mut().enumerate() {
            let t = Instant::now();
            match i {
                0 => in_sandbox(Isolation::Transaction).await?,
                1 => in_sandbox(Isolation::Database).await?,
                _ => by_hand().await?,
            }
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    for (system, t) in [SANDBOXED, OWN, PLAIN].into_iter().zip(times) {
        r.add(W, "ms", system, median(t));
    }
    Ok(())
}

pub(crate) fn ratios(r: &Results) -> Vec<(String, f64, &'static str)> {
    vec![
        (
            "a sandboxed test vs a test database made by hand, time (lower is better)".into(),
            r.get(W, "ms", SANDBOXED) / r.get(W, "ms", PLAIN),
            "(measured)",
        ),
        (
            "a test with a database of its own vs one made by hand, time (lower is better)".into(),
            r.get(W, "ms", OWN) / r.get(W, "ms", PLAIN),
            "(measured)",
        ),
    ]
}
