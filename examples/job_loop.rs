//! A background job queue with one session per iteration. Four workers claim jobs with
//! `FOR UPDATE SKIP LOCKED`, so each job is processed by exactly one of them without the workers
//! waiting for each other. One iteration panics halfway through its transaction: its claim is
//! rolled back (the job goes back to the queue and another iteration takes it), the loop goes on,
//! and the pool's numbers at the end show every connection back.
//!
//! `cargo run --example job_loop`: on `DATABASE_URL` when set, else a throwaway PostgreSQL.

use std::time::Duration;

use actor_orm::ddl;
use actor_orm::prelude::*;
use actor_orm::testing::Cluster;

#[derive(Model, Clone, Debug)]
#[orm(table_name = "jobs")]
struct Job {
    #[orm(primary_key, auto_increment)]
    id: i64,
    payload: String,
    done: bool,
    attempts: i32,
    worker: Option<i32>,
}

/// A job not yet done by anyone.
fn new_job(payload: String) -> Job {
    Job {
        id: 0,
        payload,
        done: false,
        attempts: 0,
        worker: None,
    }
}

/// One iteration of worker `w`: its own session, its own transaction. Claims the oldest job no
/// other worker holds, does it, marks it done. `Ok(false)` when the queue is empty.
async fn iteration(pool: Pool, w: i32, iteration: u32) -> Result<bool> {
    let session = pool.named_session(format!("worker {w}")).await?;
    let claimed = session
        .first(
            Job::query()
                .filter(Job::DONE.eq(false))
                .order_by(Job::ID.asc())
                .for_update()
                .skip_locked(),
        )
        .await?;
    let Some(mut job) = claimed else {
        return Ok(false);
    };
    if w == 2 && iteration == 3 {
        panic!("worker {w} hit a bug while holding job {}", job.id);
    }
    job.done = true;
    job.attempts += 1;
    job.worker = Some(w);
    session.save(job).await?;
    session.commit().await?;
    Ok(true)
    // The session is dropped here (or during the panic's unwinding): connection returned.
}

async fn worker(pool: Pool, w: i32) -> u32 {
    let mut processed = 0;
    for n in 0.. {
        // Each iteration runs as a task, so a panic ends the iteration, not the worker.
        match tokio::spawn(iteration(pool.clone(), w, n)).await {
            Ok(Ok(true)) => processed += 1,
            Ok(Ok(false)) => break,
            Ok(Err(e)) => println!("worker {w}: error: {e}"),
            Err(e) if e.is_panic() => println!("worker {w}: iteration {n} panicked; going on"),
            Err(e) => println!("worker {w}: {e}"),
        }
    }
    processed
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let cluster = Cluster::from_env()?;
    let pool = Pool::builder(cluster.config()).max_size(4).build().await?;
    let setup = pool.session().await?;
    setup.raw_execute(ddl::drop_table::<Job>(), vec![]).await?;
    setup
        .raw_execute(ddl::create_table::<Job>(), vec![])
        .await?;
    setup
        .add_without_returning((1..=40).map(|n| new_job(format!("job {n}"))))
        .await?;
    setup.commit().await?;
    setup.close().await?;

    let workers: Vec<_> = (1..=4)
        .map(|w| tokio::spawn(worker(pool.clone(), w)))
        .collect();
    for (w, handle) in workers.into_iter().enumerate() {
        println!("worker {}: processed {} jobs", w + 1, handle.await?);
    }

    let check = pool.session().await?;
    let jobs = check.all(Job::query()).await?;
    let done = jobs.iter().filter(|j| j.done).count();
    let twice = jobs.iter().filter(|j| j.attempts != 1).count();
    println!(
        "{done} of {} jobs done; {twice} processed other than once",
        jobs.len()
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[actor_orm::test(models(Job))]
    async fn an_iteration_takes_the_oldest_open_job_and_marks_it_done(pool: Pool) {
        let setup = pool.session().await.expect("session");
        for n in 1..=2 {
            setup.add(new_job(format!("job {n}"))).await.expect("add");
        }
        setup.commit().await.expect("commit");
        assert!(iteration(pool.clone(), 1, 0).await.expect("first"));
        assert!(iteration(pool.clone(), 3, 0).await.expect("second"));
        assert!(!iteration(pool.clone(), 1, 1).await.expect("queue empty"));
        let jobs = setup
            .all(Job::query().order_by(Job::ID.asc()))
            .await
            .expect("jobs");
        let workers: Vec<_> = jobs
            .iter()
            .map(|j| (j.done, j.attempts, j.worker))
            .collect();
        assert_eq!(workers, [(true, 1, Some(1)), (true, 1, Some(3))]);
    }

    #[actor_orm::test(models(Job))]
    async fn an_iteration_that_panics_puts_its_job_back(pool: Pool) {
        let setup = pool.session().await.expect("session");
        setup.add(new_job("job".into())).await.expect("add");
        setup.commit().await.expect("commit");
        // Worker 2's fourth iteration panics holding its claim.
        let panicked = tokio::spawn(iteration(pool.clone(), 2, 3)).await;
        assert!(panicked.is_err_and(|e| e.is_panic()));
        assert!(iteration(pool.clone(), 1, 0).await.expect("taken again"));
    }
}
