//! criterion benchmarks: actor-orm sessions against raw tokio-postgres on the same server.
//!
//! `cargo bench` (on `DATABASE_URL` when set, else a throwaway PostgreSQL). Each group pairs an
//! actor-orm operation with the raw tokio-postgres floor doing the same work. The peers
//! (deadpool, bb8, SeaORM) are in the comparison harness, `compare/`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use actor_orm::prelude::*;
use actor_orm::testing::{Cluster, TestDatabase};
use actor_orm::{Pool, ddl};
use criterion::{Criterion, criterion_group, criterion_main};
use tokio::runtime::Runtime;

#[derive(Model, Clone, Debug, PartialEq)]
#[orm(table_name = "bench_users")]
struct BenchUser {
    #[orm(primary_key, auto_increment)]
    id: i64,
    name: String,
    email: Option<String>,
    age: i32,
}

const ROWS: i64 = 10_000;

struct Fixture {
    rt: Runtime,
    _cluster: Cluster,
    _db: TestDatabase,
    pool: Pool,
    raw: std::sync::Arc<tokio_postgres::Client>,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cluster = Cluster::from_env().expect("a PostgreSQL");
    let (db, pool, raw) = rt.block_on(async {
        let db = cluster.create_database("bench").await.expect("database");
        let raw = db.connect().await.expect("connect");
        raw.batch_execute(&ddl::create_table::<BenchUser>())
            .await
            .expect("table");
        raw.batch_execute(&format!(
            "INSERT INTO bench_users (name, email, age) \
             SELECT 'user' || g, 'user' || g || '@example.com', g % 90 FROM generate_series(1, {ROWS}) g"
        ))
        .await
        .expect("rows");
        let pool = Pool::builder(db.config())
            .max_size(4)
            .build()
            .await
            .expect("pool");
        (db, pool, raw)
    });
    Fixture {
        rt,
        _cluster: cluster,
        _db: db,
        pool,
        raw: std::sync::Arc::new(raw),
    }
}

impl Fixture {
    /// Runs `work` as a task on the runtime's workers, as a server's request handler runs, not
    /// on the benchmark's own thread (where every wake-up would cross threads).
    fn in_task<F>(&self, work: F) -> Duration
    where
        F: std::future::Future<Output = Duration> + Send + 'static,
    {
        self.rt
            .block_on(self.rt.spawn(work))
            .expect("benchmark task")
    }
}

fn by_hand(row: &tokio_postgres::Row) -> BenchUser {
    BenchUser {
        id: row.get(0),
        name: row.get(1),
        email: row.get(2),
        age: row.get(3),
    }
}

fn point_reads(c: &mut Criterion, f: &Fixture) {
    let mut g = c.benchmark_group("point_read");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("raw_tokio_postgres", |b| {
        b.iter_custom(|iters| {
            let raw = f.raw.clone();
            f.in_task(async move {
                let stmt = raw
                    .prepare("SELECT id, name, email, age FROM bench_users WHERE id = $1")
                    .await
                    .expect("prepare");
                let start = Instant::now();
                for i in 0..iters {
                    let key = (i as i64 % ROWS) + 1;
                    let row = raw.query_one(&stmt, &[&key]).await.expect("row");
                    black_box(by_hand(&row));
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("actor_orm_session_get", |b| {
        b.iter_custom(|iters| {
            let pool = f.pool.clone();
            f.in_task(async move {
                let s = pool.session().await.expect("session");
                s.get::<BenchUser>(1).await.expect("warm");
                let start = Instant::now();
                for i in 0..iters {
                    let key = (i as i64 % ROWS) + 1;
                    if key == 1 {
                        // A new transaction every pass, so no key is found in the identity map.
                        s.commit().await.expect("commit");
                    }
                    black_box(s.get::<BenchUser>(key).await.expect("get"));
                }
                let elapsed = start.elapsed();
                s.close().await.expect("close");
                elapsed
            })
        })
    });
    g.bench_function("actor_orm_identity_map_hit", |b| {
        b.iter_custom(|iters| {
            let pool = f.pool.clone();
            f.in_task(async move {
                let s = pool.session().await.expect("session");
                s.get::<BenchUser>(7).await.expect("load");
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(s.get::<BenchUser>(7).await.expect("hit"));
                }
                let elapsed = start.elapsed();
                s.close().await.expect("close");
                elapsed
            })
        })
    });
    g.finish();
}

fn request_cycle(c: &mut Criterion, f: &Fixture) {
    let mut g = c.benchmark_group("request_cycle");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("actor_orm_session_get_commit_drop", |b| {
        b.iter_custom(|iters| {
            let pool = f.pool.clone();
            f.in_task(async move {
                let start = Instant::now();
                for i in 0..iters {
                    let s = pool.session().await.expect("session");
                    let key = (i as i64 % ROWS) + 1;
                    black_box(s.get::<BenchUser>(key).await.expect("get"));
                    s.commit().await.expect("commit");
                    drop(s);
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

fn writes(c: &mut Criterion, f: &Fixture) {
    let mut g = c.benchmark_group("insert_1000");
    g.sample_size(10);
    g.bench_function("actor_orm_flush", |b| {
        b.iter_custom(|iters| {
            let pool = f.pool.clone();
            f.in_task(async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let s = pool.session().await.expect("session");
                    s.add_all((0..1000).map(|i| BenchUser {
                        id: 0,
                        name: format!("new{i}"),
                        email: None,
                        age: i,
                    }))
                    .await
                    .expect("add_all");
                    s.flush().await.expect("flush");
                    // Measured up to the flush; rolled back so the table stays the same size.
                    s.rollback().await.expect("rollback");
                }
                start.elapsed()
            })
        })
    });
    g.bench_function("raw_single_row_inserts", |b| {
        b.iter_custom(|iters| {
            let raw = f.raw.clone();
            f.in_task(async move {
                let stmt = raw
                    .prepare("INSERT INTO bench_users (name, email, age) VALUES ($1, $2, $3) RETURNING id")
                    .await
                    .expect("prepare");
                let start = Instant::now();
                for _ in 0..iters {
                    raw.batch_execute("BEGIN").await.expect("begin");
                    for i in 0..1000i32 {
                        let name = format!("new{i}");
                        raw
                            .query_one(&stmt, &[&name, &None::<String>, &i])
                            .await
                            .expect("insert");
                    }
                    raw.batch_execute("ROLLBACK").await.expect("rollback");
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let f = fixture();
    point_reads(c, &f);
    request_cycle(c, &f);
    writes(c, &f);
}

criterion_group!(session, benches);
criterion_main!(session);
