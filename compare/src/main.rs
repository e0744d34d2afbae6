//! The comparison harness: the same workloads through raw tokio-postgres (the floor),
//! deadpool-postgres, bb8-postgres, SeaORM (on its sqlx pool) and actor-orm — same server, same
//! pool size, same process, interleaved rounds — printed as a markdown table of medians and
//! ratios and written to `BENCHMARKS.md`.
//!
//! `cargo run --release --manifest-path compare/Cargo.toml` (on `DATABASE_URL` when set, else a
//! throwaway PostgreSQL). `ROUNDS=n` changes the number of rounds (default 5).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actor_orm::prelude::*;
use actor_orm::testing::Cluster;
use futures_util::pin_mut;
use sea_orm::{ActiveModelTrait, ConnectionTrait, EntityTrait, Set, TransactionTrait};
use tokio_postgres::NoTls;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

mod chart;
mod floors;
mod pgbench;
mod pooler;
mod relations;
mod replicas;
mod sandbox;
mod streaming;
mod tls;

// ----- allocation counting, for peak memory and bytes per session -----

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = CURRENT.fetch_add(new_size - layout.size(), Ordering::Relaxed)
                    + (new_size - layout.size());
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes allocated at the peak of `work`, above what was allocated before it.
async fn peak_of<T>(work: impl Future<Output = T>) -> (T, usize) {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = work.await;
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

// ----- pinning: the client on one core, PostgreSQL on the other -----

/// Restricts process (or thread) `pid` (0: the caller) to one CPU.
fn pin(pid: i32, cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the pointers are to locals.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// The parent pid of `pid`, from /proc.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid …": comm may hold spaces, so split after the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Moves the postmaster and every process it has forked to `cpu`; backends forked later inherit
/// it. Returns how many processes moved.
fn pin_server(postmaster: u32, cpu: usize) -> usize {
    let mut moved = usize::from(pin(postmaster as i32, cpu));
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                && parent_of(pid) == Some(postmaster)
                && pin(pid as i32, cpu)
            {
                moved += 1;
            }
        }
    }
    moved
}

// ----- the model, three ways -----

#[derive(Model, Clone, Debug, PartialEq)]
#[orm(table_name = "bench_users")]
struct BenchUser {
    #[orm(primary_key, auto_increment)]
    id: i64,
    name: String,
    email: Option<String>,
    age: i32,
}

#[derive(Model, Clone, Debug, PartialEq)]
#[orm(table_name = "bench_many")]
struct BenchMany {
    #[orm(primary_key, auto_increment)]
    id: i64,
    name: String,
    email: Option<String>,
    age: i32,
}

#[derive(Model, Clone, Debug, PartialEq)]
#[orm(table_name = "bench_writes")]
struct BenchWrite {
    #[orm(primary_key, auto_increment)]
    id: i64,
    name: String,
    email: Option<String>,
    age: i32,
}

mod sea_user {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bench_users")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub name: String,
        pub email: Option<String>,
        pub age: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

mod sea_many {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bench_many")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub name: String,
        pub email: Option<String>,
        pub age: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

mod sea_write {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bench_writes")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub name: String,
        pub email: Option<String>,
        pub age: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

fn by_hand(row: &tokio_postgres::Row) -> BenchUser {
    BenchUser {
        id: row.get(0),
        name: row.get(1),
        email: row.get(2),
        age: row.get(3),
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const USERS: i64 = 10_000;
const MANY: i64 = 100_000;
const POOL: usize = 16;
const N: usize = 2_000;

pub(crate) struct Systems {
    raw: tokio_postgres::Client,
    deadpool: deadpool_postgres::Pool,
    bb8: bb8::Pool<bb8_postgres::PostgresConnectionManager<NoTls>>,
    sea: sea_orm::DatabaseConnection,
    orm: actor_orm::Pool,
}

async fn systems(pg: &tokio_postgres::Config, url: &str, size: usize) -> Res<Systems> {
    let (raw, conn) = pg.connect(NoTls).await?;
    tokio::spawn(conn);
    let mgr = deadpool_postgres::Manager::from_config(
        pg.clone(),
        NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    let deadpool = deadpool_postgres::Pool::builder(mgr)
        .max_size(size)
        .build()?;
    let bb8 = bb8::Pool::builder()
        .max_size(size as u32)
        .build(bb8_postgres::PostgresConnectionManager::new(
            pg.clone(),
            NoTls,
        ))
        .await?;
    let mut opt = sea_orm::ConnectOptions::new(url.to_owned());
    opt.max_connections(size as u32)
        .min_connections(size as u32)
        .sqlx_logging(false);
    let sea = sea_orm::Database::connect(opt).await?;
    let orm = actor_orm::Pool::builder(pg)
        .max_size(size)
        .min_idle(size)
        .build()
        .await?;
    // Warm every pool to its full size, so no round measures a connect.
    let mut held = Vec::new();
    for _ in 0..size {
        held.push(deadpool.get().await?);
    }
    drop(held);
    let mut held = Vec::new();
    for _ in 0..size {
        held.push(bb8.get().await?);
    }
    drop(held);
    let mut held = Vec::new();
    for _ in 0..size {
        let s = orm.session().await?;
        s.acquire().await?;
        held.push(s);
    }
    for s in held {
        s.close().await?;
    }
    Ok(Systems {
        raw,
        deadpool,
        bb8,
        sea,
        orm,
    })
}

// ----- measurements -----

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// p10, p25, p50, p75, p90 and p99 of sorted latencies (the chart draws them; the table shows
/// them too).
fn add_distribution(r: &mut Results, w: &str, sys: &'static str, sorted: &[Duration]) {
    if sys.starts_with("floor:") {
        // A floor is read against the p50 only.
        r.add(w, "p50 µs", sys, us(percentile(sorted, 0.5)));
        return;
    }
    for (name, p) in [
        ("p10 µs", 0.10),
        ("p25 µs", 0.25),
        ("p50 µs", 0.50),
        ("p75 µs", 0.75),
        ("p90 µs", 0.90),
        ("p99 µs", 0.99),
    ] {
        r.add(w, name, sys, us(percentile(sorted, p)));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Per-round results: (workload, metric, system) → values.
#[derive(Default)]
struct Results(BTreeMap<(String, String), BTreeMap<&'static str, Vec<f64>>>);

impl Results {
    fn add(&mut self, workload: &str, metric: &str, system: &'static str, v: f64) {
        self.0
            .entry((workload.to_owned(), metric.to_owned()))
            .or_default()
            .entry(system)
            .or_default()
            .push(v);
    }

    fn get(&self, workload: &str, metric: &str, system: &str) -> f64 {
        self.0
            .get(&(workload.to_owned(), metric.to_owned()))
            .and_then(|m| m.get(system))
            .map(|v| median(v.clone()))
            .unwrap_or(f64::NAN)
    }
}

type OpFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Res<()>> + Send + 'a>>;
type Op<'a> = Box<dyn FnMut(usize) -> OpFuture<'a> + Send + 'a>;

/// Boxes one system's operation for [`interleaved`].
fn op<'a, F, Fut>(mut f: F) -> Op<'a>
where
    F: FnMut(usize) -> Fut + Send + 'a,
    Fut: Future<Output = Res<()>> + Send + 'a,
{
    Box::new(move |i| Box::pin(f(i)))
}

/// A request cycle on each actor-orm pool of `systems`: a session, a point read of a
/// [`BenchUser`], a commit when `commit`, the session's end.
fn pool_cycles<'a>(
    systems: &[(&'static str, &'a actor_orm::Pool)],
    commit: bool,
) -> Vec<(&'static str, Op<'a>)> {
    systems
        .iter()
        .map(|&(name, pool)| {
            (
                name,
                op(move |i| async move {
                    let session = pool.session().await?;
                    black_box(session.get::<BenchUser>(key(i)).await?);
                    if commit {
                        session.commit().await?;
                    }
                    drop(session);
                    Ok(())
                }),
            )
        })
        .collect()
}

/// `n` timed operations of each system, taken in turn — operation `i` of every system before
/// operation `i + 1` of any, starting with a different system each time — so that every system
/// meets the same machine conditions. Sorted latencies per system.
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// A new order for `order` (Fisher–Yates on a xorshift generator).
fn shuffle(order: &mut [usize], seed: &mut u64) {
    for j in (1..order.len()).rev() {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        order.swap(j, (*seed % (j as u64 + 1)) as usize);
    }
}

async fn interleaved(
    n: usize,
    mut ops: Vec<(&'static str, Op<'_>)>,
) -> Res<Vec<(&'static str, Vec<Duration>)>> {
    let k = ops.len();
    let mut out: Vec<Vec<Duration>> = (0..k).map(|_| Vec::with_capacity(n)).collect();
    // A new order every turn (Fisher–Yates on a fixed-seed xorshift). A fixed or rotating order
    // gives each system the same predecessor almost every time, and a system that follows one
    // running the same code (deadpool after raw) finds its caches warm: in a rotating order
    // deadpool and bb8 measured ~6% faster than raw tokio-postgres, which they wrap.
    let mut order: Vec<usize> = (0..k).collect();
    let mut seed = SEED;
    for i in 0..n {
        shuffle(&mut order, &mut seed);
        for &which in &order {
            let t = Instant::now();
            (ops[which].1)(i).await?;
            out[which].push(t.elapsed());
        }
    }
    Ok(ops
        .iter_mut()
        .zip(out)
        .map(|((name, _), mut l)| {
            l.sort();
            (*name, l)
        })
        .collect())
}

fn key(i: usize) -> i64 {
    (i as i64 * 7919) % USERS + 1
}

/// One point read through a tokio-postgres client (raw, or inside a pool's connection) with a
/// prepared statement and the hand-written mapping.
fn prepared_read<'a>(
    client: &'a tokio_postgres::Client,
    stmt: &'a tokio_postgres::Statement,
) -> Op<'a> {
    op(move |i| async move {
        black_box(by_hand(&client.query_one(stmt, &[&key(i)]).await?));
        Ok(())
    })
}

async fn point_reads(s: &Arc<Systems>, r: &mut Results) -> Res<()> {
    let w = "1. point read by primary key";
    let stmt_sql = "SELECT id, name, email, age FROM bench_users WHERE id = $1";
    let raw_stmt = s.raw.prepare(stmt_sql).await?;
    let dp = s.deadpool.get().await?;
    let dp_stmt = dp.prepare_cached(stmt_sql).await?;
    let b8 = s.bb8.get().await?;
    let b8_stmt = b8.prepare(stmt_sql).await?;
    let session = s.orm.session().await?;
    let session_ref = &session;
    let (reader, reader_done) = floors::reader().await?;
    let raw_stmt_ref = &raw_stmt;
    let reader_ref = &reader;
    let results = interleaved(
        N,
        vec![
            ("raw tokio-postgres", prepared_read(&s.raw, &raw_stmt)),
            (
                floors::READ,
                op(move |i| async move {
                    let read = floors::What::Read(s.clone(), raw_stmt_ref.clone(), key(i));
                    black_box(floors::ask(reader_ref, read).await?);
                    Ok(())
                }),
            ),
            ("deadpool-postgres", prepared_read(&dp, &dp_stmt)),
            ("bb8-postgres", prepared_read(&b8, &b8_stmt)),
            (
                "SeaORM",
                op(move |i| async move {
                    black_box(sea_user::Entity::find_by_id(key(i)).one(&s.sea).await?);
                    Ok(())
                }),
            ),
            (
                "actor-orm",
                op(move |i| async move {
                    // Keys differ for the N operations: every get reads the database.
                    black_box(session_ref.get::<BenchUser>(key(i)).await?);
                    Ok(())
                }),
            ),
        ],
    )
    .await?;
    for (sys, l) in results {
        add_distribution(r, w, sys, &l);
    }
    drop((dp, b8));
    session.close().await?;
    reader.stop(None);
    reader_done.await?;

    // 2. The same key again in one session: the identity map answers.
    let session = s.orm.session().await?;
    session.get::<BenchUser>(7).await?;
    let session_ref = &session;
    let results = interleaved(
        N,
        vec![(
            "actor-orm",
            op(move |_| async move {
                black_box(session_ref.get::<BenchUser>(7).await?);
                Ok(())
            }),
        )],
    )
    .await?;
    session.close().await?;
    for (sys, l) in results {
        r.add(
            "2. same key again in one session",
            "p50 µs",
            sys,
            us(percentile(&l, 0.5)),
        );
    }
    Ok(())
}

async fn request_cycles(s: &Systems, r: &mut Results) -> Res<()> {
    let w = "3. request cycle (checkout, point read, return)";
    let spares = floors::Spares::default();
    let spares_ref = &spares;
    let sql = "SELECT id, name, email, age FROM bench_users WHERE id = $1";
    let results = interleaved(
        N,
        vec![
            (
                "deadpool-postgres",
                op(move |i| async move {
                    let client = s.deadpool.get().await?;
                    let stmt = client.prepare_cached(sql).await?;
                    black_box(by_hand(&client.query_one(&stmt, &[&key(i)]).await?));
                    Ok(())
                }),
            ),
            (
                "bb8-postgres",
                op(move |i| async move {
                    let conn = s.bb8.get().await?;
                    black_box(by_hand(&conn.query_one(sql, &[&key(i)]).await?));
                    Ok(())
                }),
            ),
            (
                "SeaORM",
                op(move |i| async move {
                    black_box(sea_user::Entity::find_by_id(key(i)).one(&s.sea).await?);
                    Ok(())
                }),
            ),
            (
                "actor-orm",
                op(move |i| async move {
                    let session = s.orm.session().await?;
                    black_box(session.get::<BenchUser>(key(i)).await?);
                    session.commit().await?;
                    drop(session);
                    Ok(())
                }),
            ),
            (
                floors::CYCLE,
                op(move |i| async move {
                    let conn = s.deadpool.get().await?;
                    let read = floors::What::PooledRead(conn, key(i));
                    black_box(spares_ref.session(read).await?);
                    Ok(())
                }),
            ),
        ],
    )
    .await?;
    for (sys, l) in results {
        add_distribution(r, w, sys, &l);
    }
    Ok(())
}

/// `workers` tasks × 10 requests each; requests per second.
async fn throughput<F, Fut>(workers: usize, op: F) -> Res<f64>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Res<()>> + Send,
{
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let op = op.clone();
        set.spawn(async move {
            for _ in 0..10 {
                op().await?;
            }
            Res::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok((workers * 10) as f64 / start.elapsed().as_secs_f64())
}

/// One batch of a contended workload: its throughput when run.
type BatchFuture = std::pin::Pin<Box<dyn Future<Output = Res<f64>> + Send>>;
type Batch = Box<dyn Fn() -> BatchFuture + Send>;

/// A batch of `$workers` tasks × 10 requests of `$body`, run with a clone of `$handle` bound to
/// `$h`.
macro_rules! batch {
    ($workers:expr, $handle:expr, |$h:ident| $body:block) => {{
        let handle = $handle.clone();
        let op = move || {
            let $h = handle.clone();
            async move {
                black_box($body);
                Res::Ok(())
            }
        };
        let workers = $workers;
        Box::new(move || -> BatchFuture { Box::pin(throughput(workers, op.clone())) }) as Batch
    }};
}

/// Batches per system and metric in each round. One batch of 64 × 10 requests lasts ~10 ms,
/// too short to compare alone: the systems' batches are run in a new shuffled order, again and
/// again, and the median batch is reported.
const BATCHES: usize = 15;

async fn contended(s: &Arc<Systems>, workers: usize, size: usize, r: &mut Results) -> Res<()> {
    let w = format!("4. contended: {workers} workers × 10 on {size} connections");
    let sel = "SELECT 1 req/s";
    let chk = "checkout+return req/s";
    let floor = Arc::new((s.deadpool.clone(), floors::Spares::default()));
    let batches: Vec<(&str, &str, Batch)> = vec![
        (
            sel,
            "deadpool-postgres",
            batch!(workers, s.deadpool, |p| {
                let c = p.get().await?;
                let stmt = c.prepare_cached("SELECT 1").await?;
                c.query_one(&stmt, &[]).await?
            }),
        ),
        (
            chk,
            "deadpool-postgres",
            batch!(workers, s.deadpool, |p| { drop(p.get().await?) }),
        ),
        (
            sel,
            "bb8-postgres",
            batch!(workers, s.bb8, |p| {
                p.get().await?.simple_query("SELECT 1").await?
            }),
        ),
        (
            chk,
            "bb8-postgres",
            batch!(workers, s.bb8, |p| { drop(p.get().await?) }),
        ),
        (
            sel,
            "SeaORM",
            batch!(workers, s.sea, |db| {
                db.execute_unprepared("SELECT 1").await?
            }),
        ),
        (
            chk,
            "SeaORM",
            batch!(workers, s.sea, |db| {
                drop(db.get_postgres_connection_pool().acquire().await?)
            }),
        ),
        (
            sel,
            "actor-orm",
            batch!(workers, s.orm, |p| {
                p.session()
                    .await?
                    .raw_rows_autocommit("SELECT 1", vec![])
                    .await?
            }),
        ),
        (
            chk,
            "actor-orm",
            batch!(workers, s.orm, |p| { p.session().await?.acquire().await? }),
        ),
        (
            sel,
            floors::CYCLE,
            batch!(workers, floor, |f| {
                let conn = f.0.get().await?;
                f.1.session(floors::What::PooledSelect1(conn)).await?
            }),
        ),
        (
            chk,
            floors::CHECKOUT,
            batch!(workers, floor, |f| {
                f.1.session(floors::What::Ping).await?
            }),
        ),
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::with_capacity(BATCHES); batches.len()];
    let mut order: Vec<usize> = (0..batches.len()).collect();
    let mut seed = SEED ^ workers as u64;
    for _ in 0..BATCHES {
        shuffle(&mut order, &mut seed);
        for &i in &order {
            rates[i].push((batches[i].2)().await?);
        }
    }
    for ((metric, system, _), mut v) in batches.into_iter().zip(rates) {
        v.sort_by(f64::total_cmp);
        r.add(&w, metric, system, v[v.len() / 2]);
    }
    Ok(())
}

fn new_rows(n: usize) -> Vec<BenchWrite> {
    (0..n)
        .map(|i| BenchWrite {
            id: 0,
            name: format!("new{i}"),
            email: None,
            age: i as i32,
        })
        .collect()
}

/// Trials of the insert workload per round: each system inserts 1,000 rows this many times, in a
/// new shuffled order each trial, and the median trial is reported (one insert lasts ~3–80 ms,
/// too short to compare alone).
const INSERT_TRIALS: usize = 7;

/// One way of inserting the 1,000 rows: its time in ms.
async fn insert_once(s: &Systems, system: usize) -> Res<f64> {
    s.raw.batch_execute("TRUNCATE bench_writes").await?;
    // Prepared before the clock starts (a no-op on the server after the first trial).
    let single_row = s
        .raw
        .prepare("INSERT INTO bench_writes (name, email, age) VALUES ($1, $2, $3) RETURNING id")
        .await?;
    let t = Instant::now();
    match system {
        0 => {
            let session = s.orm.session().await?;
            session.add_all(new_rows(1000)).await?;
            session.commit().await?;
            let took = t.elapsed();
            session.close().await?;
            return Ok(took.as_secs_f64() * 1e3);
        }
        1 => {
            s.raw.batch_execute("BEGIN").await?;
            for row in new_rows(1000) {
                black_box(
                    s.raw
                        .query_one(&single_row, &[&row.name, &row.email, &row.age])
                        .await?,
                );
            }
            s.raw.batch_execute("COMMIT").await?;
        }
        2 => {
            let sink = s
                .raw
                .copy_in("COPY bench_writes (name, email, age) FROM STDIN BINARY")
                .await?;
            let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TEXT, Type::INT4]);
            pin_mut!(writer);
            for row in new_rows(1000) {
                writer
                    .as_mut()
                    .write(&[&row.name, &row.email, &row.age])
                    .await?;
            }
            writer.finish().await?;
        }
        5 => {
            let session = s.orm.session().await?;
            session.copy_in(new_rows(1000)).await?;
            session.commit().await?;
            let took = t.elapsed();
            session.close().await?;
            return Ok(took.as_secs_f64() * 1e3);
        }
        4 => {
            // Every stored row back, in input order (matched by an ordinal sent with the batch).
            let session = s.orm.session().await?;
            let stored = session.insert_all(new_rows(1000)).await?;
            black_box(stored);
            session.commit().await?;
            let took = t.elapsed();
            session.close().await?;
            return Ok(took.as_secs_f64() * 1e3);
        }
        _ => {
            let models = new_rows(1000)
                .into_iter()
                .map(|row| sea_write::ActiveModel {
                    name: Set(row.name),
                    email: Set(row.email),
                    age: Set(row.age),
                    ..Default::default()
                });
            sea_write::Entity::insert_many(models).exec(&s.sea).await?;
        }
    }
    Ok(t.elapsed().as_secs_f64() * 1e3)
}

async fn writes(s: &Systems, r: &mut Results) -> Res<()> {
    let w = "5. insert 1,000 rows";
    let m = "ms";
    let systems = [
        "actor-orm",
        "raw: 1,000 single-row INSERTs",
        "raw: COPY BINARY",
        "SeaORM",
        "actor-orm insert_all (rows back in order)",
        "actor-orm copy_in",
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(INSERT_TRIALS); systems.len()];
    let mut order: Vec<usize> = (0..systems.len()).collect();
    let mut seed = SEED ^ 5;
    for _ in 0..INSERT_TRIALS {
        shuffle(&mut order, &mut seed);
        for &i in &order {
            times[i].push(insert_once(s, i).await?);
        }
    }
    for (system, mut v) in systems.into_iter().zip(times) {
        v.sort_by(f64::total_cmp);
        r.add(w, m, system, v[v.len() / 2]);
    }

    // 6. Update 1,000 loaded rows, one changed column each.
    let w = "6. update 1,000 loaded rows (one column each)";
    let session = s.orm.session().await?;
    let loaded = session.all(BenchWrite::query()).await?;
    let t = Instant::now();
    for mut row in loaded {
        row.age += 1;
        session.save(row).await?;
    }
    session.commit().await?;
    r.add(w, m, "actor-orm", t.elapsed().as_secs_f64() * 1e3);
    // The same changes handed over in one message (`save_all`).
    let mut loaded = session.all(BenchWrite::query()).await?;
    let t = Instant::now();
    for row in &mut loaded {
        row.age += 1;
    }
    session.save_all(loaded).await?;
    session.commit().await?;
    r.add(w, m, "actor-orm save_all", t.elapsed().as_secs_f64() * 1e3);
    session.close().await?;

    let ids: Vec<i64> = s
        .raw
        .query("SELECT id FROM bench_writes", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let stmt = s
        .raw
        .prepare("UPDATE bench_writes SET age = age + 1 WHERE id = $1")
        .await?;
    let t = Instant::now();
    s.raw.batch_execute("BEGIN").await?;
    for id in &ids {
        s.raw.execute(&stmt, &[id]).await?;
    }
    s.raw.batch_execute("COMMIT").await?;
    r.add(w, m, "raw tokio-postgres", t.elapsed().as_secs_f64() * 1e3);
    // The floor: the same change as one hand-written statement (the server's own work).
    let stmt = s
        .raw
        .prepare("UPDATE bench_writes AS t SET age = t.age + 1 FROM unnest($1::int8[]) AS v(id) WHERE t.id = v.id")
        .await?;
    let t = Instant::now();
    s.raw.batch_execute("BEGIN").await?;
    s.raw.execute(&stmt, &[&ids]).await?;
    s.raw.batch_execute("COMMIT").await?;
    r.add(
        w,
        m,
        "raw: one UPDATE … FROM unnest",
        t.elapsed().as_secs_f64() * 1e3,
    );

    let loaded = sea_write::Entity::find().all(&s.sea).await?;
    let t = Instant::now();
    let txn = s.sea.begin().await?;
    for row in loaded {
        let age = row.age + 1;
        let mut am: sea_write::ActiveModel = row.into();
        am.age = Set(age);
        am.update(&txn).await?;
    }
    txn.commit().await?;
    r.add(w, m, "SeaORM", t.elapsed().as_secs_f64() * 1e3);
    Ok(())
}

async fn bulk_read(s: &Systems, r: &mut Results) -> Res<()> {
    let w = "7. read 100,000 rows into models";
    let (rows, peak) = peak_of(async {
        let t = Instant::now();
        let rows: Vec<BenchUser> = s
            .raw
            .query("SELECT id, name, email, age FROM bench_many", &[])
            .await?
            .iter()
            .map(by_hand)
            .collect();
        Res::Ok((t.elapsed(), rows.len()))
    })
    .await;
    let (took, n) = rows?;
    r.add(w, "ms", "raw tokio-postgres", took.as_secs_f64() * 1e3);
    r.add(w, "peak MB", "raw tokio-postgres", peak as f64 / 1e6);
    assert_eq!(n as i64, MANY);

    let (rows, peak) = peak_of(async {
        let t = Instant::now();
        let rows = sea_many::Entity::find().all(&s.sea).await?;
        Res::Ok((t.elapsed(), rows.len()))
    })
    .await;
    let (took, _) = rows?;
    r.add(w, "ms", "SeaORM", took.as_secs_f64() * 1e3);
    r.add(w, "peak MB", "SeaORM", peak as f64 / 1e6);

    let session = s.orm.session().await?;
    let (rows, peak) = peak_of(async {
        let t = Instant::now();
        let rows = session.all(BenchMany::query()).await?;
        Res::Ok((t.elapsed(), rows.len()))
    })
    .await;
    let (took, _) = rows?;
    session.close().await?;
    r.add(w, "ms", "actor-orm", took.as_secs_f64() * 1e3);
    r.add(w, "peak MB", "actor-orm", peak as f64 / 1e6);
    Ok(())
}

async fn idle_sessions(s: &Systems, r: &mut Results) -> Res<()> {
    let n = 10_000;
    let base = CURRENT.load(Ordering::Relaxed);
    let mut sessions = Vec::with_capacity(n);
    let vec_bytes = n * std::mem::size_of::<actor_orm::Session>();
    for _ in 0..n {
        sessions.push(s.orm.session().await?);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let used = CURRENT
        .load(Ordering::Relaxed)
        .saturating_sub(base + vec_bytes);
    r.add(
        "8. 10,000 live idle sessions",
        "bytes per session",
        "actor-orm",
        used as f64 / n as f64,
    );
    drop(sessions);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bare = floors::idle_bytes(n, || CURRENT.load(Ordering::Relaxed)).await?;
    r.add(
        "8. 10,000 live idle sessions",
        "bytes per session",
        floors::IDLE,
        bare,
    );
    Ok(())
}

fn url_of(pg: &tokio_postgres::Config, db: &str) -> String {
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        _ => "127.0.0.1".to_owned(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let user = pg.get_user().unwrap_or("postgres");
    match pg.get_password() {
        Some(p) => format!(
            "postgres://{user}:{}@{host}:{port}/{db}",
            String::from_utf8_lossy(p)
        ),
        None => format!("postgres://{user}@{host}:{port}/{db}"),
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    // Online CPUs of the machine, not of this (possibly pinned) process.
    // SAFETY: sysconf only reads a system setting.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    format!("{cpu}, {cores} cores, {}", std::env::consts::ARCH)
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

const SYSTEMS: [&str; 5] = [
    "raw tokio-postgres",
    "deadpool-postgres",
    "bb8-postgres",
    "SeaORM",
    "actor-orm",
];

async fn run() -> Res<()> {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    // The process's shared cluster: the sandbox of workload 16 uses the same one.
    let cluster: &'static Cluster =
        tokio::task::spawn_blocking(actor_orm::testing::shared_cluster).await??;
    let pinned = match (PINNED.get(), cluster.postmaster_pid()) {
        (Some(true), Some(postmaster)) => {
            let moved = pin_server(postmaster, 1);
            eprintln!("pinned this process to CPU 0 and {moved} server processes to CPU 1");
            true
        }
        _ => false,
    };
    let db = cluster.create_database("compare").await?;
    let pg = db.config().clone();
    let url = url_of(&pg, db.name());
    let setup = db.connect().await?;
    for table in ["bench_users", "bench_many", "bench_writes"] {
        setup
            .batch_execute(&format!(
                "CREATE TABLE {table} (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, \
                 name text NOT NULL, email text, age integer NOT NULL)"
            ))
            .await?;
    }
    setup
        .batch_execute(&format!(
            "INSERT INTO bench_users (name, email, age) SELECT 'user' || g, 'user' || g || '@example.com', g % 90 \
             FROM generate_series(1, {USERS}) g; \
             INSERT INTO bench_many (name, email, age) SELECT 'user' || g, 'user' || g || '@example.com', g % 90 \
             FROM generate_series(1, {MANY}) g"
        ))
        .await?;
    setup.batch_execute("VACUUM ANALYZE").await?;
    relations::set_up(&setup).await?;
    streaming::set_up(&setup).await?;
    let version: String = setup.query_one("SHOW server_version", &[]).await?.get(0);

    let main = Arc::new(systems(&pg, &url, POOL).await?);
    let small = Arc::new(systems(&pg, &url, 4).await?);
    let mut r = Results::default();
    // ONLY=1,3 runs just those workloads (for profiling); workloads 5 and 6 run together.
    let only = std::env::var("ONLY").unwrap_or_default();
    let on = |n: &str| only.is_empty() || only.split(',').any(|w| w.trim() == n);
    let tls_bench = if on("10") {
        match tls::TlsBench::set_up(pinned).await {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("workload 10 (TLS) skipped: {e}");
                None
            }
        }
    } else {
        None
    };
    let replica_bench = if on("15") {
        match replicas::ReplicaBench::set_up(cluster, db.name(), POOL).await {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("workload 15 (read replica) skipped: {e}");
                None
            }
        }
    } else {
        None
    };
    let pooler_bench = if on("14") {
        match pooler::PoolerBench::set_up(&pg, db.name(), POOL).await {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("workload 14 (PgBouncer) skipped: {e}");
                None
            }
        }
    } else {
        None
    };
    let bench = if on("9") {
        Some(pgbench::Bench::set_up(cluster).await?)
    } else {
        None
    };
    for round in 0..rounds {
        eprintln!("round {} of {rounds}", round + 1);
        if on("1") {
            point_reads(&main, &mut r).await?;
        }
        if on("3") {
            request_cycles(&main, &mut r).await?;
        }
        if on("4") {
            contended(&main, 64, POOL, &mut r).await?;
            contended(&small, 256, 4, &mut r).await?;
        }
        if on("5") {
            writes(&main, &mut r).await?;
        }
        if on("7") {
            bulk_read(&main, &mut r).await?;
        }
        if on("8") {
            idle_sessions(&main, &mut r).await?;
        }
        if on("11") {
            relations::round(&main, &mut r).await?;
        }
        if on("12") {
            relations::copy_round(&main, &mut r).await?;
        }
        if on("13") {
            streaming::round(&main, &mut r).await?;
        }
        if let Some(bench) = &bench {
            bench.round(round, &mut r).await?;
        }
        if let Some(tls) = &tls_bench {
            tls.round(&mut r).await?;
        }
        if let Some(pooler) = &pooler_bench {
            pooler.round(&mut r).await?;
        }
        if let Some(replica) = &replica_bench {
            replica.round(&mut r).await?;
        }
        if on("16") {
            sandbox::round(&mut r).await?;
        }
    }

    let mut out = String::new();
    let date = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    writeln!(out, "# Benchmarks\n")?;
    writeln!(
        out,
        "Run on {date}; {}; PostgreSQL {version} on loopback (throwaway cluster, fsync off); \
         pool size {POOL} unless stated; {rounds} interleaved rounds, medians of the rounds; \
         {N} operations per latency measurement, the systems taking turns operation by \
         operation in a new random order each turn; contended workloads as the median of \
         {BATCHES} batches per system in each round, the batches of all systems shuffled; \
         inserts as the median of {INSERT_TRIALS} trials per system in each round, shuffled; \
         tokio {}; {}. Produced by \
         `cargo run --release --manifest-path compare/Cargo.toml`.\n",
        machine(),
        RUNTIME_NAME.get().copied().unwrap_or("runtime"),
        if pinned {
            "the harness pinned to CPU 0 and PostgreSQL to CPU 1"
        } else {
            "not pinned"
        }
    )?;
    writeln!(out, "| workload | metric | {} |", SYSTEMS.join(" | "))?;
    writeln!(out, "|---|---|{}", "---:|".repeat(SYSTEMS.len()))?;
    let mut extra: Vec<String> = Vec::new();
    for ((workload, metric), by_system) in &r.0 {
        let mut line = format!("| {workload} | {metric} |");
        for sys in SYSTEMS {
            let v = by_system.get(sys).map(|v| median(v.clone()));
            write!(line, " {} |", v.map(fmt).unwrap_or_else(|| "—".into()))?;
        }
        writeln!(out, "{line}")?;
        for (sys, v) in by_system {
            if !SYSTEMS.contains(sys) {
                extra.push(format!(
                    "| {workload} | {metric} | {sys} | {} |",
                    fmt(median(v.clone()))
                ));
            }
        }
    }
    if !extra.is_empty() {
        writeln!(
            out,
            "\nOther anchors:\n\n| workload | metric | what | value |\n|---|---|---|---:|"
        )?;
        for e in extra {
            writeln!(out, "{e}")?;
        }
    }

    // Ratios against the anchors of the same run.
    let p50 = |w: &str, sys: &str| r.get(w, "p50 µs", sys);
    let w1 = "1. point read by primary key";
    let w3 = "3. request cycle (checkout, point read, return)";
    let w4a = format!("4. contended: 64 workers × 10 on {POOL} connections");
    let w4b = "4. contended: 256 workers × 10 on 4 connections".to_owned();
    let w5 = "5. insert 1,000 rows";
    let w6 = "6. update 1,000 loaded rows (one column each)";
    let w7 = "7. read 100,000 rows into models";
    let best_pool = |w: &str, m: &str| {
        r.get(w, m, "deadpool-postgres")
            .max(r.get(w, m, "bb8-postgres"))
    };
    let rows: Vec<(String, f64, &str)> = vec![
        (
            "point read p50 vs raw tokio-postgres (lower is better)".into(),
            p50(w1, "actor-orm") / p50(w1, "raw tokio-postgres"),
            "≤ 1.03×",
        ),
        (
            "floor: point read asked of a bare ractor actor holding the raw client vs raw \
             (an actor in the path, nothing else; lower is better)"
                .into(),
            p50(w1, floors::READ) / p50(w1, "raw tokio-postgres"),
            "(floor)",
        ),
        (
            "point read p50 vs that floor (the session's own work; lower is better)".into(),
            p50(w1, "actor-orm") / p50(w1, floors::READ),
            "(measured)",
        ),
        (
            "identity-map hit: speed-up over a database read".into(),
            p50(w1, "actor-orm") / p50("2. same key again in one session", "actor-orm"),
            "≥ 30×",
        ),
        (
            "request cycle p50 vs deadpool-postgres (lower is better)".into(),
            p50(w3, "actor-orm") / p50(w3, "deadpool-postgres"),
            "≤ 0.80×",
        ),
        (
            "floor: request cycle, a deadpool connection handed with the read to a spare bare \
             ractor actor, then a message ending it, vs deadpool (lower is better)"
                .into(),
            p50(w3, floors::CYCLE) / p50(w3, "deadpool-postgres"),
            "(floor)",
        ),
        (
            "request cycle p50 vs SeaORM (lower is better)".into(),
            p50(w3, "actor-orm") / p50(w3, "SeaORM"),
            "< 1×",
        ),
        (
            format!("contended SELECT 1, 64 on {POOL}: throughput vs best of deadpool/bb8"),
            r.get(&w4a, "SELECT 1 req/s", "actor-orm") / best_pool(&w4a, "SELECT 1 req/s"),
            "≥ 1.10×",
        ),
        (
            format!(
                "floor: contended SELECT 1, 64 on {POOL}: deadpool connections handed to spare \
                 bare ractor actors vs best of deadpool/bb8"
            ),
            r.get(&w4a, "SELECT 1 req/s", floors::CYCLE) / best_pool(&w4a, "SELECT 1 req/s"),
            "(floor)",
        ),
        (
            "contended SELECT 1, 256 on 4: throughput vs best of deadpool/bb8".into(),
            r.get(&w4b, "SELECT 1 req/s", "actor-orm") / best_pool(&w4b, "SELECT 1 req/s"),
            "≥ 1.10×",
        ),
        (
            "floor: contended SELECT 1, 256 on 4: deadpool connections handed to spare bare \
             ractor actors vs best of deadpool/bb8"
                .into(),
            r.get(&w4b, "SELECT 1 req/s", floors::CYCLE) / best_pool(&w4b, "SELECT 1 req/s"),
            "(floor)",
        ),
        (
            format!("contended checkout only, 64 on {POOL}: throughput vs best of deadpool/bb8"),
            r.get(&w4a, "checkout+return req/s", "actor-orm")
                / best_pool(&w4a, "checkout+return req/s"),
            "(measured)",
        ),
        (
            format!("contended checkout only, 64 on {POOL}: actor-orm checkouts per second"),
            r.get(&w4a, "checkout+return req/s", "actor-orm"),
            "≥ 1,000,000 /s",
        ),
        (
            "floor: spare bare ractor actors asked once and told once, per second, 64 workers \
             (a checkout's ceiling when each session is an actor)"
                .into(),
            r.get(&w4a, "checkout+return req/s", floors::CHECKOUT),
            "(floor)",
        ),
        (
            "insert 1,000: speed vs SeaORM insert_many".into(),
            r.get(w5, "ms", "SeaORM") / r.get(w5, "ms", "actor-orm"),
            "≥ 1.0×",
        ),
        (
            "insert 1,000: time vs COPY BINARY (lower is better)".into(),
            r.get(w5, "ms", "actor-orm") / r.get(w5, "ms", "raw: COPY BINARY"),
            "≤ 2×",
        ),
        (
            "insert 1,000: speed-up over 1,000 single-row round trips".into(),
            r.get(w5, "ms", "raw: 1,000 single-row INSERTs") / r.get(w5, "ms", "actor-orm"),
            "≥ 10×",
        ),
        (
            "floor: insert 1,000: raw COPY BINARY, speed-up over 1,000 single-row round trips \
             (the fastest way in)"
                .into(),
            r.get(w5, "ms", "raw: 1,000 single-row INSERTs") / r.get(w5, "ms", "raw: COPY BINARY"),
            "(floor)",
        ),
        (
            "copy_in 1,000: time vs raw COPY BINARY (lower is better)".into(),
            r.get(w5, "ms", "actor-orm copy_in") / r.get(w5, "ms", "raw: COPY BINARY"),
            "≤ 1.2×",
        ),
        (
            "insert_all 1,000 (every row back, in order): time vs add_all (lower is better)".into(),
            r.get(w5, "ms", "actor-orm insert_all (rows back in order)")
                / r.get(w5, "ms", "actor-orm"),
            "(measured)",
        ),
        (
            "read 100,000 rows: time vs raw with hand-written mapping (lower is better)".into(),
            r.get(w7, "ms", "actor-orm") / r.get(w7, "ms", "raw tokio-postgres"),
            "≤ 1.0×",
        ),
        (
            "read 100,000 rows: peak memory vs raw with hand-written mapping (lower is better)"
                .into(),
            r.get(w7, "peak MB", "actor-orm") / r.get(w7, "peak MB", "raw tokio-postgres"),
            "≤ 1.0×",
        ),
        (
            "update 1,000 loaded rows (save each): speed-up over 1,000 raw single-row UPDATEs"
                .into(),
            r.get(w6, "ms", "raw tokio-postgres") / r.get(w6, "ms", "actor-orm"),
            "≥ 10×",
        ),
        (
            "update 1,000 loaded rows (save_all): speed-up over 1,000 raw single-row UPDATEs"
                .into(),
            r.get(w6, "ms", "raw tokio-postgres") / r.get(w6, "ms", "actor-orm save_all"),
            "≥ 10×",
        ),
        (
            "floor: update 1,000: one hand-written UPDATE … FROM unnest, speed-up over 1,000 raw \
             single-row UPDATEs (no client does better)"
                .into(),
            r.get(w6, "ms", "raw tokio-postgres")
                / r.get(w6, "ms", "raw: one UPDATE … FROM unnest"),
            "(floor)",
        ),
        (
            "update 1,000 loaded rows (save_all): speed vs SeaORM".into(),
            r.get(w6, "ms", "SeaORM") / r.get(w6, "ms", "actor-orm save_all"),
            "(measured)",
        ),
        (
            "update 1,000 loaded rows (save_all): time vs one hand-written UPDATE … FROM unnest \
             (the floor; lower is better)"
                .into(),
            r.get(w6, "ms", "actor-orm save_all")
                / r.get(w6, "ms", "raw: one UPDATE … FROM unnest"),
            "(measured)",
        ),
        (
            "live idle session, KiB (allocated bytes / 10,000 sessions)".into(),
            r.get(
                "8. 10,000 live idle sessions",
                "bytes per session",
                "actor-orm",
            ) / 1024.0,
            "≤ 4 KiB",
        ),
        (
            "floor: live idle ractor actor with no state, KiB (allocated bytes / 10,000 actors)"
                .into(),
            r.get(
                "8. 10,000 live idle sessions",
                "bytes per session",
                floors::IDLE,
            ) / 1024.0,
            "(floor)",
        ),
    ];
    let mut rows = rows;
    let worst_drift =
        r.0.iter()
            .filter(|((w, m), _)| w.starts_with("9.") && m.starts_with("balance drift"))
            .flat_map(|(_, by_system)| by_system.values().flatten().copied())
            .fold(0.0_f64, f64::max);
    rows.push((
        "pgbench TPC-B-like: largest balance drift after any run, any system (lost updates)".into(),
        worst_drift,
        "0",
    ));
    rows.extend(tls::ratios(&r));
    rows.extend(relations::ratios(&r));
    rows.push(relations::copy_ratio(&r));
    rows.extend(streaming::ratios(&r));
    rows.extend(pooler::ratios(&r));
    rows.extend(replicas::ratios(&r));
    rows.extend(sandbox::ratios(&r));
    for clients in pgbench::CLIENTS {
        let w = format!("9. pgbench TPC-B-like, {clients} client(s), scale 10");
        let target = if clients == 32 {
            "(no target)"
        } else {
            "≥ 1.0×"
        };
        rows.push((
            format!(
                "pgbench TPC-B-like, {clients} client(s): actor-orm tps vs pgbench -M prepared"
            ),
            r.get(&w, "tps", "actor-orm") / r.get(&w, "tps", "pgbench"),
            target,
        ));
        rows.push((
            format!("pgbench TPC-B-like, {clients} client(s): raw tokio-postgres tps vs pgbench"),
            r.get(&w, "tps", "raw tokio-postgres") / r.get(&w, "tps", "pgbench"),
            "(anchor)",
        ));
    }
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.svg");
    chart::draw(&chart, &r, &rows)?;
    writeln!(
        out,
        "\n## Ratios (same run)\n\nThe chart: [`BENCHMARKS.svg`](BENCHMARKS.svg) (ratios \
         against their targets; latency distributions of the point read and the request \
         cycle).\n\n| measure | actor-orm | target |\n|---|---:|---|"
    )?;
    for (what, v, target) in &rows {
        let unit = if what.contains("per second") {
            " /s"
        } else if what.contains("KiB") {
            " KiB"
        } else if what.ends_with(" MB") {
            " MB"
        } else if what.contains("drift") {
            ""
        } else {
            "×"
        };
        writeln!(out, "| {what} | {}{unit} | {target} |", fmt(*v))?;
    }
    write_gaps(&mut out, &rows)?;
    print!("{out}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS.md");
    std::fs::write(&path, &out)?;
    eprintln!("wrote {}", path.display());
    main.orm.close(Duration::from_secs(5)).await?;
    small.orm.close(Duration::from_secs(5)).await?;
    Ok(())
}

/// The targets this run missed, each with its floor when one was measured: whether the floor
/// itself meets the target (if not, no change to the ORM's own layers can), and how far above
/// the floor the ORM is (its own share of the gap).
/// A target of the ratio table as a bound: at most (`≤`, `<`) or at least (`≥`), and its
/// number (`≥ 1,000,000 /s` is 1000000).
pub(crate) fn bound(text: &str) -> Option<(bool, f64)> {
    let at_most = text.starts_with('≤') || text.starts_with('<');
    if !(at_most || text.starts_with('≥')) {
        return None;
    }
    let number: String = text
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number.parse().ok().map(|n| (at_most, n))
}

/// The floor of row `i`'s target: the `(floor)` row right after it, or after the rows of the
/// same workload and target that follow it (a floor stands right after the targets it bounds).
pub(crate) fn floor_of(rows: &[(String, f64, &str)], i: usize) -> Option<f64> {
    let (what, _, target) = rows.get(i)?;
    let workload: String = what.chars().take(24).collect();
    rows.iter()
        .skip(i + 1)
        .find(|(w, _, t)| !(t == target && w.starts_with(&workload)))
        .filter(|(_, f, t)| *t == "(floor)" && !f.is_nan())
        .map(|(_, f, _)| *f)
}

fn write_gaps(out: &mut String, rows: &[(String, f64, &str)]) -> Res<()> {
    let mut lines = Vec::new();
    for (i, (what, v, t)) in rows.iter().enumerate() {
        let Some((at_most, goal)) = bound(t) else {
            continue;
        };
        let unit = if t.ends_with('×') {
            "×"
        } else if t.ends_with("/s") {
            " /s"
        } else {
            " KiB"
        };
        let met = if at_most { *v <= goal } else { *v >= goal };
        if met || v.is_nan() {
            continue;
        }
        let line = match floor_of(rows, i) {
            Some(f) => {
                let f = &f;
                let floor_meets = if at_most { *f <= goal } else { *f >= goal };
                let verdict = if floor_meets {
                    "the floor meets the target: the rest of the gap is the ORM's own"
                } else {
                    "the floor itself misses the target"
                };
                // How far actor-orm is from its floor, in the direction the target counts.
                let off = if at_most { v / f } else { f / v };
                let own = if off >= 1.0 {
                    format!(
                        "actor-orm is {}× off its floor: that share is its own",
                        fmt(off)
                    )
                } else {
                    format!(
                        "actor-orm does better than this floor, by {}×",
                        fmt(1.0 / off)
                    )
                };
                format!(
                    "- {what}: {}{unit} against {t}; floor {}{unit} ({verdict}); {own}",
                    fmt(*v),
                    fmt(*f),
                )
            }
            None => format!("- {what}: {}{unit} against {t}; no floor measured", fmt(*v)),
        };
        lines.push(line);
    }
    if !lines.is_empty() {
        writeln!(
            out,
            "\n## Missed targets and their floors (same run)\n\nA floor is the same work with \
             only what the design cannot remove (the rows marked `floor:` above): a ractor actor \
             in the path, an actor per session, PgBouncer's own hop, one hand-written statement.\n"
        )?;
        for line in lines {
            writeln!(out, "{line}")?;
        }
    }
    Ok(())
}

fn main() -> Res<()> {
    // One thread by default: every system's tasks (caller, connection drivers, pool and session
    // actors) share it, so the numbers measure each layer's work rather than where the
    // scheduler happened to place its tasks (on this 2-core machine a cross-thread wake-up
    // costs more than a loopback round trip). RUNTIME=multi runs on two worker threads.
    let multi = std::env::var("RUNTIME").is_ok_and(|v| v == "multi");
    // On a throwaway cluster, the harness keeps to CPU 0 and PostgreSQL to CPU 1 (PIN=0 turns
    // this off): loopback timings otherwise move 2× between runs with where the scheduler puts
    // the client and the backend. Threads started from here on inherit CPU 0.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin_wanted = std::env::var("PIN").map_or(true, |v| v != "0")
        && std::env::var("DATABASE_URL").is_err()
        && cores >= 2
        && !multi;
    PINNED.set(pin_wanted && pin(0, 0)).ok();
    let rt = if multi {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    };
    RUNTIME_NAME
        .set(if multi {
            "multi-thread runtime, 2 workers"
        } else {
            "current-thread runtime"
        })
        .ok();
    rt.block_on(async { tokio::spawn(run()).await? })
}

static RUNTIME_NAME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
static PINNED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
