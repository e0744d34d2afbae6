//! Workload 9: PostgreSQL's own benchmark transaction (pgbench's TPC-B-like script) at 1, 8 and
//! 32 clients, through pgbench itself (`-M prepared`, its C client: the ceiling), raw
//! tokio-postgres with prepared statements (one connection per client) and actor-orm written the
//! idiomatic way with expression updates (the two whose balances it does not read deferred to the
//! COMMIT). After every run the three balance totals are checked
//! against the history's deltas (pgbench's invariant): a lost update would show as drift.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actor_orm::prelude::*;
use actor_orm::testing::{Cluster, SearchPaths, find_server_binaries};
use tokio_postgres::NoTls;

use crate::{Res, Results, url_of};

const SCALE: i32 = 10;
pub(crate) const CLIENTS: [usize; 3] = [1, 8, 32];

#[derive(Model, Clone, Debug)]
#[orm(table_name = "pgbench_accounts")]
struct PgAccount {
    #[orm(primary_key)]
    aid: i32,
    bid: i32,
    abalance: i32,
}

#[derive(Model, Clone, Debug)]
#[orm(table_name = "pgbench_tellers")]
struct PgTeller {
    #[orm(primary_key)]
    tid: i32,
    bid: i32,
    tbalance: i32,
}

#[derive(Model, Clone, Debug)]
#[orm(table_name = "pgbench_branches")]
struct PgBranch {
    #[orm(primary_key)]
    bid: i32,
    bbalance: i32,
}

/// pgbench's history has no key; the harness gives it an identity column `hid` (which pgbench's
/// own INSERT leaves to its default, as the ORM does) and `mtime` a default of
/// CURRENT_TIMESTAMP, so the ORM writes the same row pgbench does.
#[derive(Model, Clone, Debug)]
#[orm(table_name = "pgbench_history")]
struct PgHistory {
    #[orm(primary_key, auto_increment)]
    hid: i64,
    tid: i32,
    bid: i32,
    aid: i32,
    delta: i32,
}

/// One transaction's random choices, drawn as pgbench draws them.
#[derive(Clone, Copy)]
struct Draw {
    aid: i32,
    tid: i32,
    bid: i32,
    delta: i32,
}

fn draw(seed: &mut u64) -> Draw {
    let mut next = |m: i32| {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        (*seed % m as u64) as i32
    };
    Draw {
        aid: 1 + next(100_000 * SCALE),
        bid: 1 + next(SCALE),
        tid: 1 + next(10 * SCALE),
        delta: next(10_001) - 5_000,
    }
}

/// The transaction as an actor-orm user writes it: expression updates (the account's is read
/// back with RETURNING, where pgbench's script runs a SELECT after it: the same value, one
/// statement fewer), an insert that reads nothing back, a commit (which sends the INSERT and
/// COMMIT together).
async fn orm_transaction(pool: &actor_orm::Pool, d: Draw) -> actor_orm::Result<()> {
    let s = pool.session().await?;
    let account = s
        .update_returning(
            UpdateWhere::<PgAccount>::key(d.aid)
                .set(PgAccount::ABALANCE, PgAccount::ABALANCE.add(d.delta)),
        )
        .await?;
    std::hint::black_box(account.first().map(|a| a.abalance));
    // The teller's and the branch's balances are not read: deferred, they go out with the
    // history row and the COMMIT, in one round trip.
    s.defer_update_where(
        UpdateWhere::<PgTeller>::key(d.tid)
            .set(PgTeller::TBALANCE, PgTeller::TBALANCE.add(d.delta)),
    )
    .await?;
    s.defer_update_where(
        UpdateWhere::<PgBranch>::key(d.bid)
            .set(PgBranch::BBALANCE, PgBranch::BBALANCE.add(d.delta)),
    )
    .await?;
    s.add_without_returning([PgHistory {
        hid: 0,
        tid: d.tid,
        bid: d.bid,
        aid: d.aid,
        delta: d.delta,
    }])
    .await?;
    s.commit().await
}

/// pgbench's script, statement by statement, prepared.
struct RawClient {
    client: tokio_postgres::Client,
    stmts: Vec<tokio_postgres::Statement>,
}

impl RawClient {
    async fn connect(pg: &tokio_postgres::Config) -> Res<RawClient> {
        let (client, conn) = pg.connect(NoTls).await?;
        tokio::spawn(conn);
        let mut stmts = Vec::new();
        for sql in [
            "BEGIN",
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
            "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
            "END",
        ] {
            stmts.push(client.prepare(sql).await?);
        }
        Ok(RawClient { client, stmts })
    }

    async fn transaction(&self, d: Draw) -> Res<()> {
        let (c, s) = (&self.client, &self.stmts);
        c.execute(&s[0], &[]).await?;
        c.execute(&s[1], &[&d.delta, &d.aid]).await?;
        c.query_one(&s[2], &[&d.aid]).await?;
        c.execute(&s[3], &[&d.delta, &d.tid]).await?;
        c.execute(&s[4], &[&d.delta, &d.bid]).await?;
        c.execute(&s[5], &[&d.tid, &d.bid, &d.aid, &d.delta])
            .await?;
        c.execute(&s[6], &[]).await?;
        Ok(())
    }
}

/// Runs `clients` loops of `one` until `secs` have passed; transactions per second.
async fn drive<F, Fut>(clients: usize, secs: f64, make: impl Fn(usize) -> F) -> Res<f64>
where
    F: FnMut(Draw) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Res<()>> + Send,
{
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut loops = Vec::new();
    for c in 0..clients {
        let mut one = make(c);
        let mut seed =
            0x9e37_79b9_7f4a_7c15_u64 ^ ((c as u64 + 1) << 32) ^ start.elapsed().as_nanos() as u64;
        loops.push(tokio::spawn(async move {
            let mut done = 0_u64;
            while Instant::now() < deadline {
                one(draw(&mut seed)).await?;
                done += 1;
            }
            Res::Ok(done)
        }));
    }
    let mut total = 0;
    for l in loops {
        total += l.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// How far each balance total is from the history's sum (all 0 when nothing was lost).
async fn drift(client: &tokio_postgres::Client) -> Res<i64> {
    let row = client
        .query_one(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts)::int8,
                    (SELECT sum(tbalance) FROM pgbench_tellers)::int8,
                    (SELECT sum(bbalance) FROM pgbench_branches)::int8,
                    (SELECT coalesce(sum(delta), 0) FROM pgbench_history)::int8",
            &[],
        )
        .await?;
    let h: i64 = row.get(3);
    Ok((0..3).map(|i| (row.get::<_, i64>(i) - h).abs()).sum())
}

fn pgbench_binary() -> std::path::PathBuf {
    find_server_binaries(&SearchPaths::from_machine())
        .ok()
        .and_then(|b| b.initdb.parent().map(|d| d.join("pgbench")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "pgbench".into())
}

/// The pgbench database, initialised at scale 10.
pub(crate) struct Bench {
    url: String,
    pg: tokio_postgres::Config,
    check: tokio_postgres::Client,
    orm: actor_orm::Pool,
    secs: f64,
}

impl Bench {
    pub(crate) async fn set_up(cluster: &Cluster) -> Res<Bench> {
        let db = cluster.create_database("pgbench").await?;
        let pg = db.config().clone();
        let url = url_of(&pg, db.name());
        // The database lives as long as the cluster; the harness drops neither early.
        std::mem::forget(db);
        let init = {
            let url = url.clone();
            tokio::task::spawn_blocking(move || {
                std::process::Command::new(pgbench_binary())
                    .args(["-i", "-q", "-s", &SCALE.to_string(), &url])
                    .output()
            })
            .await??
        };
        if !init.status.success() {
            return Err(format!(
                "pgbench -i failed: {}",
                String::from_utf8_lossy(&init.stderr)
            )
            .into());
        }
        let (check, conn) = pg.connect(NoTls).await?;
        tokio::spawn(conn);
        check
            .batch_execute(
                "ALTER TABLE pgbench_history ADD COLUMN hid bigint GENERATED BY DEFAULT AS IDENTITY;
                 ALTER TABLE pgbench_history ALTER COLUMN mtime SET DEFAULT CURRENT_TIMESTAMP",
            )
            .await?;
        check.batch_execute("VACUUM ANALYZE").await?;
        let max = CLIENTS[CLIENTS.len() - 1];
        let orm = actor_orm::Pool::builder(pg.clone())
            .max_size(max)
            .min_idle(max)
            .build()
            .await?;
        let secs = std::env::var("PGBENCH_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4.0);
        Ok(Bench {
            url,
            pg,
            check,
            orm,
            secs,
        })
    }

    async fn pgbench(&self, clients: usize) -> Res<f64> {
        let args = vec![
            "-n".to_owned(),
            "-M".into(),
            "prepared".into(),
            "-c".into(),
            clients.to_string(),
            "-j".into(),
            "1".into(),
            "-T".into(),
            format!("{}", self.secs.ceil() as u64),
            self.url.clone(),
        ];
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(pgbench_binary())
                .args(&args)
                .output()
        })
        .await??;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find(|l| l.starts_with("tps = ") && l.contains("without initial connection time"))
            .and_then(|l| l["tps = ".len()..].split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                format!(
                    "no tps in pgbench's output: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
                .into()
            })
    }

    /// One round: every client count, the three systems in turn (rotated by round).
    pub(crate) async fn round(&self, round: usize, r: &mut Results) -> Res<()> {
        for clients in CLIENTS {
            let workload = format!("9. pgbench TPC-B-like, {clients} client(s), scale {SCALE}");
            for turn in 0..3 {
                let system = (turn + round) % 3;
                let before = drift(&self.check).await?;
                let (name, tps) = match system {
                    0 => ("pgbench", self.pgbench(clients).await?),
                    1 => {
                        let mut raw = Vec::new();
                        for _ in 0..clients {
                            raw.push(Arc::new(RawClient::connect(&self.pg).await?));
                        }
                        let tps = drive(clients, self.secs, |c| {
                            let raw = raw[c].clone();
                            move |d| {
                                let raw = raw.clone();
                                async move { raw.transaction(d).await }
                            }
                        })
                        .await?;
                        ("raw tokio-postgres", tps)
                    }
                    _ => {
                        let tps = drive(clients, self.secs, |_| {
                            let pool = self.orm.clone();
                            move |d| {
                                let pool = pool.clone();
                                async move { Ok(orm_transaction(&pool, d).await?) }
                            }
                        })
                        .await?;
                        ("actor-orm", tps)
                    }
                };
                let lost = drift(&self.check).await? - before;
                r.add(&workload, "tps", name, tps);
                r.add(
                    &workload,
                    "balance drift after the run (0 = no lost update)",
                    name,
                    lost as f64,
                );
            }
        }
        Ok(())
    }
}
