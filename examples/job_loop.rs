//! A background job loop with one session per iteration. One iteration panics halfway through a
//! transaction; the loop goes on, the panicked iteration's writes are rolled back, and the pool's
//! numbers at the end show every connection back.
//!
//! `cargo run --example job_loop`: on `DATABASE_URL` when set, else a throwaway PostgreSQL.

use std::time::Duration;

use actor_orm::ddl;
use actor_orm::prelude::*;
use actor_orm::testing::Cluster;

#[derive(Model, Clone, Debug)]
#[orm(table_name = "job_runs")]
struct JobRun {
    #[orm(primary_key, auto_increment)]
    id: i64,
    iteration: i32,
}

/// One iteration of the job: its own session, its own transaction.
async fn iteration(pool: Pool, n: i32) -> Result<()> {
    let session = pool.named_session(format!("job iteration {n}")).await?;
    session
        .add(JobRun {
            id: 0,
            iteration: n,
        })
        .await?;
    session.flush().await?; // the row is written inside the open transaction
    if n == 3 {
        panic!("iteration {n} hit a bug after writing its row");
    }
    session.commit().await
    // The session is dropped here (or during the panic's unwinding): connection returned.
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let cluster = Cluster::from_env()?;
    let pool = Pool::builder(cluster.config()).max_size(2).build().await?;
    let setup = pool.session().await?;
    setup
        .raw_execute(ddl::drop_table::<JobRun>(), vec![])
        .await?;
    setup
        .raw_execute(ddl::create_table::<JobRun>(), vec![])
        .await?;
    setup.commit().await?;
    setup.close().await?;

    for n in 1..=6 {
        // Each iteration runs as a task, so a panic ends the iteration, not the loop.
        match tokio::spawn(iteration(pool.clone(), n)).await {
            Ok(Ok(())) => println!("iteration {n}: committed"),
            Ok(Err(e)) => println!("iteration {n}: error: {e}"),
            Err(e) if e.is_panic() => println!("iteration {n}: panicked; the loop goes on"),
            Err(e) => println!("iteration {n}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let check = pool.session().await?;
    let runs: Vec<i32> = check
        .all(JobRun::query().order_by(JobRun::ITERATION.asc()))
        .await?
        .into_iter()
        .map(|r| r.iteration)
        .collect();
    println!("committed iterations: {runs:?} (3 was rolled back)");
    check.close().await?;

    let s = pool.stats().await?;
    println!(
        "pool: {} open (max {}), {} in use, {} idle; {} checkouts = {} checkins + {} reclaimed + {} discarded",
        s.total, s.max_size, s.in_use, s.idle, s.checkouts, s.checkins, s.reclaims, s.discards
    );
    pool.close(Duration::from_secs(5)).await?;
    cluster.stop();
    Ok(())
}
