//! Writes that stay correct under concurrency: pgbench's TPC-B transaction written four ways
//! with the ORM (expression updates, deferred expression updates sent with the COMMIT,
//! get-and-save with the dirty-column check and the retry helper, locking reads) keeps pgbench's
//! invariant under 8 concurrent sessions; the same get-and-save with the check off does not. An
//! expression update of a versioned row makes older copies of it stale. A `SKIP LOCKED` job queue hands every job to
//! exactly one of 8 workers.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use actor_orm::prelude::*;
use actor_orm::{Connection, PoolBuilder, SingleKey, Writable, ddl, testing};

use crate::models::{User, create_schema};

#[derive(Model, Clone, Debug)]
#[orm(table_name = "pgbench_branches")]
pub struct Branch {
    #[orm(primary_key)]
    pub bid: i32,
    pub bbalance: i32,
}

#[derive(Model, Clone, Debug)]
#[orm(table_name = "pgbench_tellers")]
pub struct Teller {
    #[orm(primary_key)]
    pub tid: i32,
    #[orm(references = Branch)]
    pub bid: i32,
    pub tbalance: i32,
}

#[derive(Model, Clone, Debug)]
#[orm(table_name = "pgbench_accounts")]
pub struct Account {
    #[orm(primary_key)]
    pub aid: i32,
    #[orm(references = Branch)]
    pub bid: i32,
    pub abalance: i32,
}

#[derive(Model, Clone, Debug)]
#[orm(table_name = "pgbench_history")]
pub struct History {
    #[orm(primary_key, auto_increment)]
    pub id: i64,
    pub tid: i32,
    pub bid: i32,
    pub aid: i32,
    pub delta: i32,
    #[orm(default = "now()")]
    pub mtime: Option<chrono::DateTime<chrono::Utc>>,
}

const BRANCHES: i32 = 1;
const TELLERS: i32 = 10;
const ACCOUNTS: i32 = 1_000;
const CLIENTS: usize = 8;
const TRANSACTIONS: usize = 2_000;

/// pgbench's tables at scale 1 (with 1,000 accounts), every balance 0.
async fn pgbench_schema(conn: &Connection) {
    let sql = [
        ddl::create_table::<Branch>(),
        ddl::create_table::<Teller>(),
        ddl::create_table::<Account>(),
        ddl::create_table::<History>(),
        format!("INSERT INTO pgbench_branches SELECT b, 0 FROM generate_series(1, {BRANCHES}) b"),
        format!(
            "INSERT INTO pgbench_tellers SELECT t, 1 + (t - 1) % {BRANCHES}, 0 FROM generate_series(1, {TELLERS}) t"
        ),
        format!(
            "INSERT INTO pgbench_accounts SELECT a, 1 + (a - 1) % {BRANCHES}, 0 FROM generate_series(1, {ACCOUNTS}) a"
        ),
    ];
    conn.batch(&sql.join(";\n")).await.expect("pgbench schema");
}

/// One transaction's random choices, as pgbench draws them.
#[derive(Clone, Copy)]
struct Draw {
    aid: i32,
    tid: i32,
    bid: i32,
    delta: i32,
}

impl Draw {
    /// A cheap deterministic generator: transaction `n` of client `c`.
    fn new(c: usize, n: usize) -> Draw {
        let mut x = (c as u64 * 1_000_003 + n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = |m: i32| {
            x ^= x >> 29;
            x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            (x >> 33) as i32 % m
        };
        Draw {
            aid: 1 + next(ACCOUNTS),
            tid: 1 + next(TELLERS),
            bid: 1 + next(BRANCHES),
            delta: next(10_001) - 5_000,
        }
    }

    fn history(&self) -> History {
        History {
            id: 0,
            tid: self.tid,
            bid: self.bid,
            aid: self.aid,
            delta: self.delta,
            mtime: None,
        }
    }
}

/// The pgbench transaction the natural way with expression updates: each balance is changed by
/// the server from its current value.
async fn tpcb_expression(pool: &Pool, d: Draw) -> Result<()> {
    let s = pool.session().await?;
    s.update_where(
        UpdateWhere::<Account>::key(d.aid).set(Account::ABALANCE, Account::ABALANCE.add(d.delta)),
    )
    .await?;
    s.get::<Account>(d.aid).await?;
    s.update_where(
        UpdateWhere::<Teller>::key(d.tid).set(Teller::TBALANCE, Teller::TBALANCE.add(d.delta)),
    )
    .await?;
    s.update_where(
        UpdateWhere::<Branch>::key(d.bid).set(Branch::BBALANCE, Branch::BBALANCE.add(d.delta)),
    )
    .await?;
    s.add_without_returning([d.history()]).await?;
    s.commit().await
}

/// The pgbench transaction with the account's balance read back by its UPDATE and the
/// teller's and branch's deferred: they go out with the history row and the COMMIT.
async fn tpcb_deferred(pool: &Pool, d: Draw) -> Result<()> {
    let s = pool.session().await?;
    s.update_returning(
        UpdateWhere::<Account>::key(d.aid).set(Account::ABALANCE, Account::ABALANCE.add(d.delta)),
    )
    .await?;
    s.defer_update_where(
        UpdateWhere::<Teller>::key(d.tid).set(Teller::TBALANCE, Teller::TBALANCE.add(d.delta)),
    )
    .await?;
    s.defer_update_where(
        UpdateWhere::<Branch>::key(d.bid).set(Branch::BBALANCE, Branch::BBALANCE.add(d.delta)),
    )
    .await?;
    s.add_without_returning([d.history()]).await?;
    s.commit().await
}

/// The pgbench transaction as get, change, save in one session.
async fn tpcb_get_and_save(s: &Session, d: Draw) -> Result<()> {
    let mut a = s.get::<Account>(d.aid).await?.expect("account");
    a.abalance += d.delta;
    s.save(a).await?;
    let mut t = s.get::<Teller>(d.tid).await?.expect("teller");
    t.tbalance += d.delta;
    s.save(t).await?;
    let mut b = s.get::<Branch>(d.bid).await?.expect("branch");
    b.bbalance += d.delta;
    s.save(b).await?;
    s.add_without_returning([d.history()]).await
}

/// The pgbench transaction as get-and-save with every row read `FOR UPDATE`.
async fn tpcb_for_update(pool: &Pool, d: Draw) -> Result<()> {
    let s = pool.session().await?;
    let mut a = s.get_for_update::<Account>(d.aid).await?.expect("account");
    a.abalance += d.delta;
    s.save(a).await?;
    let mut t = s.get_for_update::<Teller>(d.tid).await?.expect("teller");
    t.tbalance += d.delta;
    s.save(t).await?;
    let mut b = s.get_for_update::<Branch>(d.bid).await?.expect("branch");
    b.bbalance += d.delta;
    s.save(b).await?;
    s.add_without_returning([d.history()]).await?;
    s.commit().await
}

/// How far each table's total is from the sum of the history's deltas (pgbench's invariant:
/// all three are 0), and how many history rows there are.
async fn drift(monitor: &tokio_postgres::Client) -> ([i64; 3], i64) {
    let row = monitor
        .query_one(
            "SELECT (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts)::int8,
                    (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers)::int8,
                    (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches)::int8,
                    (SELECT coalesce(sum(delta), 0) FROM pgbench_history)::int8,
                    (SELECT count(*) FROM pgbench_history)",
            &[],
        )
        .await
        .expect("totals");
    let history: i64 = row.get(3);
    let off = |i: usize| row.get::<_, i64>(i) - history;
    ([off(0), off(1), off(2)], row.get(4))
}

/// Runs `TRANSACTIONS` transactions from `CLIENTS` concurrent clients; how many succeeded.
async fn run_clients<F, Fut>(pool: &Pool, one: F) -> usize
where
    F: Fn(Pool, Draw) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (pool, one) = (pool.clone(), one.clone());
        clients.push(tokio::spawn(async move {
            let mut ok = 0;
            for n in 0..TRANSACTIONS / CLIENTS {
                match one(pool.clone(), Draw::new(c, n)).await {
                    Ok(()) => ok += 1,
                    Err(e) => panic!("transaction {n} of client {c}: {e}"),
                }
            }
            ok
        }));
    }
    let mut total = 0;
    for c in clients {
        total += c.await.expect("client");
    }
    total
}

async fn pgbench_pool(
    hint: &str,
    configure: impl FnOnce(PoolBuilder) -> PoolBuilder,
) -> (testing::TestDatabase, Pool, tokio_postgres::Client) {
    let (db, conn) = crate::connect(hint).await;
    pgbench_schema(&conn).await;
    let pool = crate::pool_on(&db, |b| configure(b.max_size(CLIENTS))).await;
    let monitor = db.connect().await.expect("monitor");
    (db, pool, monitor)
}

/// Runs the transaction from 8 clients on a fresh pgbench schema and checks that every one
/// committed and pgbench's invariant holds.
async fn keeps_the_invariant<F, Fut>(hint: &str, one: F)
where
    F: Fn(Pool, Draw) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let (_db, pool, monitor) = pgbench_pool(hint, |b| b).await;
    assert_eq!(run_clients(&pool, one).await, TRANSACTIONS);
    assert_eq!(drift(&monitor).await, ([0, 0, 0], TRANSACTIONS as i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpcb_with_expression_updates_keeps_the_invariant() {
    keeps_the_invariant("tpcb_expr", |pool, d| async move {
        tpcb_expression(&pool, d).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpcb_with_deferred_expression_updates_keeps_the_invariant() {
    keeps_the_invariant("tpcb_defer", |pool, d| async move {
        tpcb_deferred(&pool, d).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpcb_with_get_and_save_and_the_retry_helper_keeps_the_invariant() {
    let attempts = Arc::new(AtomicU32::new(0));
    let counted = attempts.clone();
    keeps_the_invariant("tpcb_save", move |pool, d| {
        let counted = counted.clone();
        async move {
            // The bound is generous: 8 clients fight over one branch row.
            let options = TransactionOptions::new().max_attempts(200);
            pool.transaction_with(options, move |s| {
                counted.fetch_add(1, Ordering::Relaxed);
                async move { tpcb_get_and_save(&s, d).await }
            })
            .await
        }
    })
    .await;
    let attempts = attempts.load(Ordering::Relaxed) as usize;
    eprintln!("get-and-save: {attempts} attempts for {TRANSACTIONS} transactions");
    assert!(
        attempts > TRANSACTIONS,
        "8 clients on one branch never collided: the check is not exercised"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpcb_with_locking_reads_keeps_the_invariant() {
    keeps_the_invariant("tpcb_lock", |pool, d| async move {
        tpcb_for_update(&pool, d).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tpcb_with_get_and_save_and_no_check_loses_updates() {
    let (_db, pool, monitor) = pgbench_pool("tpcb_lost", |b| b.dirty_check(false)).await;
    let done = run_clients(&pool, |pool, d| async move {
        let s = pool.session().await?;
        tpcb_get_and_save(&s, d).await?;
        s.commit().await
    })
    .await;
    // Every transaction "succeeded"…
    assert_eq!(done, TRANSACTIONS);
    // …and the branch total is off: updates were lost, silently. This is what the check stops.
    let (off, history) = drift(&monitor).await;
    assert_eq!(history, TRANSACTIONS as i64);
    assert_ne!(
        off[2], 0,
        "no update was lost: the test cannot tell the versions apart"
    );
}

#[derive(Model, Clone, Debug)]
#[orm(table_name = "jobs")]
pub struct Job {
    #[orm(primary_key, auto_increment)]
    pub id: i64,
    pub payload: i32,
    pub done: bool,
    pub attempts: i32,
    pub worker: Option<i32>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skip_locked_queue_hands_every_job_to_exactly_one_worker() {
    const JOBS: i32 = 10_000;
    const WORKERS: i32 = 8;
    let (db, conn) = crate::connect("queue").await;
    conn.batch(&ddl::create_table::<Job>()).await.expect("jobs");
    let pool = crate::pool_on(&db, |b| b.max_size(WORKERS as usize)).await;
    let setup = pool.session().await.expect("session");
    setup
        .add_without_returning((0..JOBS).map(|payload| Job {
            id: 0,
            payload,
            done: false,
            attempts: 0,
            worker: None,
        }))
        .await
        .expect("queue");
    setup.commit().await.expect("commit");
    setup.close().await.expect("close");

    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let pool = pool.clone();
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let s = pool.session().await.expect("session");
                // Claim a few jobs no other worker holds; the locks last until the commit.
                let claimed = s
                    .all(
                        Job::query()
                            .filter(Job::DONE.eq(false))
                            .order_by(Job::ID.asc())
                            .limit(10)
                            .for_update()
                            .skip_locked(),
                    )
                    .await
                    .expect("claim");
                if claimed.is_empty() {
                    return mine;
                }
                let ids: Vec<i64> = claimed.iter().map(|j| j.id).collect();
                s.update_where(
                    UpdateWhere::<Job>::new()
                        .set(Job::DONE, true)
                        .set(Job::ATTEMPTS, Job::ATTEMPTS.add(1))
                        .set(Job::WORKER, w)
                        .filter(Job::ID.is_in(ids.iter().copied())),
                )
                .await
                .expect("mark done");
                s.commit().await.expect("commit");
                mine.extend(ids);
            }
        }));
    }
    let mut all = Vec::new();
    let mut busy = 0;
    for w in workers {
        let mine = w.await.expect("worker");
        busy += usize::from(!mine.is_empty());
        all.extend(mine);
    }
    let distinct: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), JOBS as usize, "some job was processed twice");
    assert_eq!(distinct.len(), JOBS as usize);
    assert!(busy > 1, "only one worker ever got a job");
    let monitor = db.connect().await.expect("monitor");
    let row = monitor
        .query_one(
            "SELECT count(*) FILTER (WHERE done), count(*) FILTER (WHERE attempts <> 1) FROM jobs",
            &[],
        )
        .await
        .expect("check");
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (JOBS as i64, 0)
    );
}

#[tokio::test]
async fn nowait_on_a_held_row_is_a_typed_error() {
    let (db, conn) = crate::connect("nowait").await;
    conn.batch(&ddl::create_table::<Job>()).await.expect("jobs");
    let pool = crate::pool_on(&db, |b| b).await;
    let a = pool.session().await.expect("session");
    let job = a
        .insert(Job {
            id: 0,
            payload: 1,
            done: false,
            attempts: 0,
            worker: None,
        })
        .await
        .expect("insert");
    a.commit().await.expect("commit");
    let held = a.get_for_update::<Job>(job.id).await.expect("lock");
    assert!(held.is_some());

    let b = pool.session().await.expect("session");
    let err = b
        .get_locked::<Job>(job.id, Lock::update().nowait())
        .await
        .expect_err("the row is held");
    assert!(err.is_lock_not_available(), "{err:?}");
    assert_eq!(err.code(), Some("55P03"));
    b.rollback().await.expect("rollback");
    let err = b
        .first(Job::query().filter(Job::ID.eq(job.id)).for_share().nowait())
        .await
        .expect_err("the row is held");
    assert!(err.is_lock_not_available(), "{err:?}");
    b.rollback().await.expect("rollback");
    // SKIP LOCKED leaves it out instead.
    let none = b
        .all(Job::query().filter(Job::ID.eq(job.id)).skip_locked())
        .await
        .expect("skip");
    assert!(none.is_empty());
    b.rollback().await.expect("rollback");

    a.commit().await.expect("release the lock");
    let got = b
        .get_locked::<Job>(job.id, Lock::update().nowait())
        .await
        .expect("free now");
    assert!(got.is_some());
    b.commit().await.expect("commit");
}

/// The SQL the concurrency features send, pinned.
#[tokio::test]
async fn expression_updates_locks_and_the_dirty_check_are_pinned() {
    let expressions = [
        UpdateWhere::<Account>::key(7).set(Account::ABALANCE, Account::ABALANCE.add(-5)),
        UpdateWhere::<Account>::key(7).set(
            Account::ABALANCE,
            Account::ABALANCE.mul(2).sub(Account::BID).div(3),
        ),
        UpdateWhere::<Account>::new()
            .set(Account::ABALANCE, Account::BID)
            .filter(Account::ABALANCE.lt(0)),
    ]
    .iter()
    .map(|u| u.build().expect("build").0)
    .collect::<Vec<_>>();
    let users = [
        UpdateWhere::<User>::key(1_i64).set(User::EMAIL, User::EMAIL.coalesce("none")),
        UpdateWhere::<User>::key(1_i64).set(User::NAME, User::NAME.concat("!")),
        UpdateWhere::<User>::key(1_i64).set(User::EMAIL, User::NAME.concat("@example.com")),
    ]
    .iter()
    .map(|u| u.build().expect("build").0)
    .collect::<Vec<_>>();
    let stamped = UpdateWhere::<History>::new()
        .set(History::MTIME, actor_orm::now())
        .filter(History::DELTA.eq(0))
        .build()
        .expect("build")
        .0;
    let returning = UpdateWhere::<Account>::key(7)
        .set(Account::ABALANCE, Account::ABALANCE.add(1))
        .build_returning()
        .expect("build")
        .0;
    insta::assert_snapshot!(
        "expression_updates",
        [expressions, users, vec![stamped, returning]]
            .concat()
            .join("\n")
    );

    let locks = [
        Job::query()
            .filter(Job::DONE.eq(false))
            .limit(1)
            .for_update()
            .skip_locked(),
        Job::query().filter(Job::ID.eq(1)).for_share().nowait(),
        Job::query().for_no_key_update(),
        Job::query().lock(Lock::key_share()),
        Job::query().lock(Lock::update().of::<Job>().skip_locked()),
    ]
    .iter()
    .map(|q| q.build().0)
    .collect::<Vec<_>>();
    insta::assert_snapshot!("locking_reads", locks.join("\n"));

    // The dirty-column check: what a save of a loaded user sends.
    let (_db, conn) = crate::connect("pinned_check").await;
    create_schema(&conn).await;
    let mut s = SessionState::new();
    let ann = s.insert(&conn, User::new("ann", 30)).await.expect("insert");
    s.commit(&conn).await.expect("commit");
    let mut loaded = s
        .get::<User>(&conn, ann.id)
        .await
        .expect("get")
        .expect("row");
    loaded.email = Some("ann@example.com".into());
    loaded.age = 31;
    conn.record_statements(true);
    s.save(loaded).expect("save");
    s.commit(&conn).await.expect("commit");
    let sent = conn.take_statements();
    insta::assert_snapshot!("dirty_check", sent.join("\n"));
}

#[derive(Model, Clone, Debug)]
#[orm(table_name = "users", dirty_check = false)]
pub struct UncheckedUser {
    #[orm(primary_key, auto_increment)]
    pub id: i64,
    pub name: String,
    pub email: Option<String>,
    pub age: i32,
}

/// Two sessions on two connections: both load the same row, `b` changes its copy and
/// commits, then `a` changes its own copy and commits. `a`'s copy is returned for checks, with
/// `a`'s commit.
struct Race {
    a: SessionState,
    b: SessionState,
    conn_a: Connection,
    conn_b: Connection,
}

impl Race {
    async fn run<A: Model + SingleKey + Writable, B: Model + SingleKey + Writable>(
        &mut self,
        id: i64,
        change_b: impl FnOnce(&mut B),
        change_a: impl FnOnce(&mut A),
    ) -> (A, Result<()>) {
        let mut seen_a = self
            .a
            .get::<A>(&self.conn_a, id)
            .await
            .expect("a")
            .expect("row");
        let loaded = seen_a.clone();
        let mut seen_b = self
            .b
            .get::<B>(&self.conn_b, id)
            .await
            .expect("b")
            .expect("row");
        change_b(&mut seen_b);
        self.b.save(seen_b).expect("save");
        self.b.commit(&self.conn_b).await.expect("b commits");
        change_a(&mut seen_a);
        self.a.save(seen_a).expect("save");
        (loaded, self.a.commit(&self.conn_a).await)
    }
}

#[tokio::test]
async fn the_dirty_check_reports_a_changed_column_and_ignores_others() {
    let (db, conn_a) = crate::connect("dirty_check").await;
    create_schema(&conn_a).await;
    let conn_b = crate::connect_again(&db).await;
    let mut race = Race {
        a: SessionState::new(),
        b: SessionState::new(),
        conn_a,
        conn_b,
    };
    let ann = race
        .a
        .insert(&race.conn_a, User::new("ann", 30))
        .await
        .expect("insert");
    race.a.commit(&race.conn_a).await.expect("commit");

    // Different columns: both saves land (only the changed columns are written and checked).
    let (_, committed) = race
        .run::<User, User>(
            ann.id,
            |b| b.age = 40,
            |a| a.email = Some("a@example.com".into()),
        )
        .await;
    committed.expect("a: age is not a column it changes");

    // The same column: the second save is stale, NULL-safely (email was loaded as set).
    let (loaded, committed) = race
        .run::<User, User>(
            ann.id,
            |b| b.email = None,
            |a| a.email = Some("again@example.com".into()),
        )
        .await;
    assert_eq!(
        (loaded.age, loaded.email.as_deref()),
        (40, Some("a@example.com"))
    );
    match committed.expect_err("stale") {
        Error::Stale {
            table,
            expected_version,
            columns,
            ..
        } => {
            assert_eq!(table, "users");
            assert_eq!(expected_version, None);
            assert_eq!(columns, ["email"]);
        }
        other => panic!("expected Stale, got {other:?}"),
    }
    // Nothing of the stale unit of work is committed, even when asked again.
    assert!(matches!(
        race.a.commit(&race.conn_a).await,
        Err(Error::TransactionAborted)
    ));

    // Loaded as NULL, changed by b to a value: a's save is stale too.
    let (loaded, committed) = race
        .run::<User, User>(
            ann.id,
            |b| b.email = Some("b@example.com".into()),
            |a| a.email = Some("a2@example.com".into()),
        )
        .await;
    assert_eq!(loaded.email, None);
    let err = committed.expect_err("stale");
    assert!(err.is_stale() && err.is_retryable(), "{err:?}");
    race.a.rollback(&race.conn_a).await.expect("rollback");

    // Turned off for the model: the last writer wins, as without the check.
    race.conn_a.record_statements(true);
    let (_, committed) = race
        .run::<UncheckedUser, User>(
            ann.id,
            |b| b.email = Some("b2@example.com".into()),
            |a| a.email = Some("a3@example.com".into()),
        )
        .await;
    committed.expect("unchecked model");
    let sent = race.conn_a.take_statements();
    let update = sent
        .iter()
        .find(|s| s.starts_with("UPDATE"))
        .expect("an UPDATE");
    assert!(!update.contains("IS NOT DISTINCT FROM"), "{sent:?}");

    // Turned off for the session: likewise.
    race.a.set_dirty_check(false);
    let (_, committed) = race
        .run::<User, User>(
            ann.id,
            |b| b.email = Some("b3@example.com".into()),
            |a| a.email = Some("a4@example.com".into()),
        )
        .await;
    committed.expect("unchecked session");
}

#[tokio::test]
async fn the_retry_helper_runs_the_work_again_from_the_start() {
    let (db, pool, _monitor) = crate::pool_with_monitor("retry", |b| b).await;
    let setup = pool.session().await.expect("session");
    let ann = setup.insert(User::new("ann", 30)).await.expect("insert");
    setup.commit().await.expect("commit");
    drop(setup);
    let meddler = crate::connect_again(&db).await;

    // First attempt: someone else changes the age between our read and our save.
    let attempts = Arc::new(AtomicU32::new(0));
    let seen = attempts.clone();
    let meddler = Arc::new(meddler);
    let age = pool
        .transaction(move |s| {
            let (seen, meddler) = (seen.clone(), meddler.clone());
            async move {
                let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
                let mut u = s.get::<User>(ann.id).await?.expect("row");
                if n == 1 {
                    meddler
                        .batch(&format!(
                            "UPDATE users SET age = age + 100 WHERE id = {}",
                            ann.id
                        ))
                        .await?;
                }
                u.age += 1;
                s.save(u.clone()).await?;
                s.flush().await?;
                Ok(u.age)
            }
        })
        .await
        .expect("second attempt succeeds");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    assert_eq!(age, 131, "the retry read the meddler's change");

    // An error not worth retrying is returned after one attempt, rolled back.
    let attempts = Arc::new(AtomicU32::new(0));
    let seen = attempts.clone();
    let err = pool
        .transaction(move |s| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                s.insert(User::new("bob", 1)).await?;
                s.insert(User::new("ann", 2)).await?; // unique name
                Ok(())
            }
        })
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Some("23505"));
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(
        crate::count_users(&pool).await.expect("count"),
        1,
        "bob was rolled back"
    );

    // Always stale: the bound ends it with the last error.
    let attempts = Arc::new(AtomicU32::new(0));
    let seen = attempts.clone();
    let options = TransactionOptions::new().max_attempts(3);
    let err = pool
        .transaction_with(options, move |_s| {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(Error::Stale {
                    table: "users".into(),
                    key: "1".into(),
                    expected_version: None,
                    columns: vec!["age".into()],
                })
            }
        })
        .await
        .expect_err("gives up");
    assert!(err.is_stale());
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn serialization_failures_are_retried_and_pre_transaction_reads_are_not_served() {
    let (db, pool, _monitor) = crate::pool_with_monitor("serializable", |b| b).await;
    let setup = pool.session().await.expect("session");
    let ann = setup.insert(User::new("ann", 30)).await.expect("insert");
    setup.commit().await.expect("commit");
    drop(setup);
    let meddler = Arc::new(crate::connect_again(&db).await);

    // A write under SERIALIZABLE to a row changed after the snapshot: 40001, then a retry.
    let attempts = Arc::new(AtomicU32::new(0));
    let seen = attempts.clone();
    let m = meddler.clone();
    let options = TransactionOptions::new().isolation(Isolation::Serializable);
    pool.transaction_with(options, move |s| {
        let (seen, m) = (seen.clone(), m.clone());
        async move {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            let mut u = s.get::<User>(ann.id).await?.expect("row");
            if n == 1 {
                m.batch(&format!(
                    "UPDATE users SET email = 'm' WHERE id = {}",
                    ann.id
                ))
                .await?;
            }
            u.age += 1;
            s.save(u).await
        }
    })
    .await
    .expect("retried");
    assert_eq!(attempts.load(Ordering::SeqCst), 2);

    // A row read before a REPEATABLE READ transaction is read again inside it, not served
    // from the identity map…
    let s = pool.session().await.expect("session");
    let before = s.get::<User>(ann.id).await.expect("get").expect("row");
    let rename = |to: &str| format!("UPDATE users SET name = '{to}' WHERE id = {}", ann.id);
    meddler.batch(&rename("renamed")).await.expect("rename");
    s.begin_with(Isolation::RepeatableRead)
        .await
        .expect("begin");
    let inside = s.get::<User>(ann.id).await.expect("get").expect("row");
    assert_eq!(
        (before.name.as_str(), inside.name.as_str()),
        ("ann", "renamed")
    );
    s.rollback().await.expect("rollback");
    // …and a save of a copy read before it is checked against what that read saw.
    let before = s.get::<User>(ann.id).await.expect("get").expect("row");
    meddler.batch(&rename("again")).await.expect("rename");
    s.begin_with(Isolation::RepeatableRead)
        .await
        .expect("begin");
    let mut stale = before;
    stale.name = "mine".into();
    s.save(stale).await.expect("save");
    let err = s.commit().await.expect_err("stale");
    assert!(err.is_stale(), "{err:?}");
    // Too late to choose the isolation level once the transaction is open.
    let s = pool.session().await.expect("session");
    s.begin().await.expect("begin");
    assert!(matches!(
        s.begin_with(Isolation::Serializable).await,
        Err(Error::InvalidInput(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_victim_is_run_again() {
    let (_db, pool, _monitor) = crate::pool_with_monitor("deadlock", |b| b).await;
    let setup = pool.session().await.expect("session");
    let one = setup.insert(User::new("one", 1)).await.expect("insert");
    let two = setup.insert(User::new("two", 2)).await.expect("insert");
    setup.commit().await.expect("commit");
    drop(setup);

    // Two transactions lock the same two rows in opposite orders, meeting in the middle: the
    // server aborts one with 40P01, and the helper runs it again.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let attempts = Arc::new(AtomicU32::new(0));
    let run = |first: i64, second: i64| {
        let (pool, barrier, attempts) = (pool.clone(), barrier.clone(), attempts.clone());
        tokio::spawn(async move {
            let mine = Arc::new(AtomicU32::new(0));
            pool.transaction(move |s| {
                let (barrier, attempts, mine) = (barrier.clone(), attempts.clone(), mine.clone());
                async move {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    let n = mine.fetch_add(1, Ordering::SeqCst);
                    s.raw_execute("SET LOCAL deadlock_timeout = '50ms'", vec![])
                        .await?;
                    let mut a = s.get_for_update::<User>(first).await?.expect("row");
                    if n == 0 {
                        barrier.wait().await;
                    }
                    let mut b = s.get_for_update::<User>(second).await?.expect("row");
                    a.age += 10;
                    b.age += 10;
                    s.save(a).await?;
                    s.save(b).await
                }
            })
            .await
        })
    };
    let (x, y) = (run(one.id, two.id), run(two.id, one.id));
    x.await.expect("task").expect("first transaction");
    y.await.expect("task").expect("second transaction");
    // At least the victim's retry (another retryable failure under load only adds attempts).
    let attempts = attempts.load(Ordering::SeqCst);
    assert!(
        attempts >= 3,
        "no deadlock was retried: {attempts} attempts"
    );
    let s = pool.session().await.expect("session");
    let ages: Vec<i32> = s
        .get_many::<User, _>([one.id, two.id])
        .await
        .expect("read")
        .iter()
        .map(|u| u.age)
        .collect();
    assert_eq!(ages, [21, 22], "both transactions applied once each");
}

/// An expression UPDATE of a versioned row is a new version: a session that loaded the row
/// before and saves it finds it stale, instead of overwriting the expression's change.
#[tokio::test]
async fn an_expression_update_of_a_versioned_row_makes_older_copies_stale() {
    use crate::models::Account;
    let (db, conn) = crate::connect("expression_version").await;
    create_schema(&conn).await;
    conn.batch("INSERT INTO accounts (id, balance, version) VALUES (1, 100, 1)")
        .await
        .expect("row");
    let mut loader = actor_orm::SessionState::new();
    let mut account = loader
        .get::<Account>(&conn, 1_i64)
        .await
        .expect("get")
        .expect("row");
    let other = crate::connect_again(&db).await;
    let mut depositor = actor_orm::SessionState::new();
    depositor
        .update_where(
            &other,
            UpdateWhere::<Account>::key(1).set(Account::BALANCE, Account::BALANCE.add(5_i64)),
        )
        .await
        .expect("deposit");
    depositor.commit(&other).await.expect("commit");
    account.balance = 50;
    loader.save(account).expect("save");
    let err = loader.commit(&conn).await.expect_err("stale");
    assert!(err.is_stale(), "{err:?}");
    loader.rollback(&conn).await.expect("rollback");
    let row = &other
        .query(
            "SELECT balance, version FROM accounts WHERE id = 1",
            &actor_orm::sea_query::Values(vec![]),
            None,
        )
        .await
        .expect("row")[0];
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i32>(1)), (105, 2));
}
