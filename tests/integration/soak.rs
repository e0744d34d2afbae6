//! The soak: thousands of sessions doing mixed read/write transactions with random panics,
//! kills and cancellations on a pool smaller than the concurrency, while `pg_stat_activity` is
//! sampled every 10 ms. Short form in CI; `cargo test --test integration soak_long -- --ignored`
//! runs the long one. Loopback only, bounded, stops by itself.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actor_orm::{BoxFuture, Pool, Result};

use crate::models::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Commit,
    Rollback,
    Panic,
    Kill,
    Cancel,
}

/// A small deterministic generator, so a failing run can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fate(&mut self) -> Fate {
        match self.next() % 100 {
            0..70 => Fate::Commit,
            70..78 => Fate::Rollback,
            78..86 => Fate::Panic,
            86..93 => Fate::Kill,
            _ => Fate::Cancel,
        }
    }
}

/// One session: read some accounts, move money between two, insert a marker row, then meet its
/// fate. Returns the marker's id and the accounts debited and credited when the commit was
/// acknowledged.
async fn one(pool: Pool, id: i64, fate: Fate, seed: u64) -> Option<(i64, i64, i64)> {
    let s = pool.session().await.ok()?;
    // Two different accounts, updated in key order so that sessions never deadlock.
    let x = (seed % 8 + 1) as i64;
    let y = (x + ((seed / 8) % 7) as i64) % 8 + 1;
    let (lo, hi) = (x.min(y), x.max(y));
    let work = async {
        s.count(Account::query().filter(Account::BALANCE.gt(0)))
            .await?;
        for (key, delta) in [(lo, -1), (hi, 1)] {
            let mut acc = s.get::<Account>(key).await?.expect("seeded");
            acc.balance += delta;
            s.save(acc).await?;
        }
        s.add(User::new(&format!("m{id}"), (id % 1000) as i32))
            .await?;
        s.flush().await?;
        Result::<()>::Ok(())
    };
    let done = if fate == Fate::Cancel {
        // Give up somewhere in the middle; the session is dropped with it.
        let budget = Duration::from_micros(200 + seed % 4000);
        tokio::time::timeout(budget, work).await.ok()
    } else {
        Some(work.await)
    };
    match (done, fate) {
        (Some(Ok(())), Fate::Commit) => s.commit().await.ok().map(|_| (id, lo, hi)),
        (Some(Ok(())), Fate::Rollback) => {
            let _ = s.rollback().await;
            None
        }
        (Some(Ok(())), Fate::Panic) => {
            let _ = s
                .run(|_, _| -> BoxFuture<'_, Result<()>> {
                    Box::pin(async {
                        panic!(
                            "{} soak: a session panics mid-transaction",
                            crate::EXPECTED_PANIC
                        )
                    })
                })
                .await;
            None
        }
        (Some(Ok(())), Fate::Kill) => {
            s.kill();
            None
        }
        // Conflicts (stale versions), timeouts, cancellations: the session is dropped.
        _ => None,
    }
}

async fn soak(hint: &str, sessions: usize, concurrency: usize, max_size: usize) {
    crate::quiet_expected_panics();
    let (db, conn) = crate::connect(hint).await;
    create_schema(&conn).await;
    conn.batch("INSERT INTO accounts SELECT g, 1000, 0 FROM generate_series(1, 8) g")
        .await
        .expect("seed");
    let app = db.name().to_owned();
    let pool = crate::pool_on(&db, |b| {
        b.max_size(max_size)
            .acquire_timeout(Duration::from_secs(30))
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let monitor = db.connect().await.expect("monitor");
        let app = app.clone();
        tokio::spawn(async move {
            let (mut max_backends, mut longest_idle_in_tx, mut samples) = (0usize, 0f64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let row = monitor
                    .query_one(
                        "SELECT count(*), coalesce(max(extract(epoch FROM now() - state_change)) \
                         FILTER (WHERE state LIKE 'idle in transaction%'), 0)::float8 \
                         FROM pg_stat_activity WHERE application_name = $1",
                        &[&app],
                    )
                    .await
                    .expect("sample");
                max_backends = max_backends.max(row.get::<_, i64>(0) as usize);
                longest_idle_in_tx = longest_idle_in_tx.max(row.get::<_, f64>(1));
                samples += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (max_backends, longest_idle_in_tx, samples, monitor)
        })
    };

    let started = Instant::now();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ sessions as u64);
    let mut plan: Vec<(i64, Fate, u64)> = (0..sessions as i64)
        .map(|id| (id, rng.fate(), rng.next()))
        .collect();
    let mut committed = HashSet::new();
    let mut moved = [0_i64; 9];
    let mut running = tokio::task::JoinSet::new();
    while !plan.is_empty() || !running.is_empty() {
        while running.len() < concurrency {
            let Some((id, fate, seed)) = plan.pop() else {
                break;
            };
            running.spawn(one(pool.clone(), id, fate, seed));
        }
        if let Some(r) = running.join_next().await
            && let Some((id, lo, hi)) = r.expect("session task")
        {
            committed.insert(id);
            moved[lo as usize] -= 1;
            moved[hi as usize] += 1;
        }
    }
    let elapsed = started.elapsed();

    // Let the last reclaims and resets finish.
    let stats = crate::settled(&pool).await;
    stop.store(true, Ordering::Relaxed);
    let (max_backends, longest_idle_in_tx, samples, monitor) = sampler.await.expect("sampler");
    eprintln!(
        "soak {hint}: {sessions} sessions, {} committed, in {elapsed:?}; {samples} samples, \
         at most {max_backends} backends, longest idle-in-transaction {longest_idle_in_tx:.3}s; {stats:?}",
        committed.len()
    );

    assert!(max_backends <= max_size, "{max_backends} backends");
    // A session's own transaction sits idle between its statements for moments; a connection
    // left idle in transaction by a dead session would sit there for good.
    assert!(
        longest_idle_in_tx < 2.0,
        "{longest_idle_in_tx}s idle in transaction"
    );
    let left = crate::backends(&monitor, &app).await;
    assert!(
        left.iter()
            .all(|(_, s)| !s.starts_with("idle in transaction")),
        "{left:?}"
    );
    assert_eq!(stats.in_use, 0, "{stats:?}");
    assert_eq!(
        stats.checkouts,
        stats.checkins + stats.reclaims + stats.discards,
        "{stats:?}"
    );

    // Every acknowledged commit is there; nothing else is.
    let rows = monitor
        .query("SELECT name FROM users", &[])
        .await
        .expect("rows");
    let present: HashSet<i64> = rows
        .iter()
        .map(|r| r.get::<_, String>(0)[1..].parse().expect("marker"))
        .collect();
    assert_eq!(present, committed, "committed rows and visible rows differ");
    // Money moved only in committed transactions, one unit at a time: the total is unchanged.
    let total: i64 = monitor
        .query_one("SELECT sum(balance)::bigint FROM accounts", &[])
        .await
        .expect("sum")
        .get(0);
    assert_eq!(total, 8000);
    // And each account holds exactly what the acknowledged transfers left it.
    let balances = monitor
        .query("SELECT id, balance::bigint FROM accounts ORDER BY id", &[])
        .await
        .expect("balances");
    for row in balances {
        let (id, balance): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(balance, 1000 + moved[id as usize], "account {id}");
    }
    // A soak where nothing commits proves nothing: most sessions are meant to.
    assert!(
        committed.len() >= sessions / 5,
        "only {} of {sessions} sessions committed",
        committed.len()
    );
    pool.close(Duration::from_secs(5)).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_short() {
    soak("soak_short", 2_000, 24, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long form: a few minutes; run with --ignored"]
async fn soak_long() {
    soak("soak_long", 20_000, 64, 8).await;
}
