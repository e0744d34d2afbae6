//! A server that stops answering and leaves its sockets open (a VM pause, a network black hole, a
//! stuck backend), played by freezing backends of the test's own cluster with SIGSTOP. Every
//! frozen process is resumed (SIGCONT) when the test ends, however it ends.
//!
//! Throughout each test a sampler counts, every 10 ms, the connections this process holds to the
//! cluster that a server process has accepted (apart from the monitor's and the harness's) and the pool's backends in `pg_stat_activity`: neither ever
//! exceeds `max_size`. A backend frozen by the test stays in `pg_stat_activity` until it resumes
//! (it cannot exit while stopped) even after the pool closed its socket; it is counted apart, and
//! each test checks that it leaves once resumed, which it does only because its socket was closed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actor_orm::testing::Cluster;
use actor_orm::{Error, Pool, PoolBuilder, Value};

/// Processes stopped with SIGSTOP, resumed with SIGCONT when dropped.
struct Frozen(Vec<i32>);

impl Frozen {
    fn freeze(pids: &[i32]) -> Frozen {
        for &pid in pids {
            // SAFETY: kill(2) with a pid of the test's own cluster and a standard signal.
            assert_eq!(
                unsafe { libc::kill(pid, libc::SIGSTOP) },
                0,
                "SIGSTOP {pid}"
            );
        }
        Frozen(pids.to_vec())
    }

    fn thaw(self) {}
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &pid in self.0.iter().rev() {
            // SAFETY: as above; resuming a process that has exited is harmless (ESRCH).
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }
}

/// The largest counts the sampler saw.
#[derive(Debug, Default)]
struct Peaks {
    sockets: AtomicUsize,
    backends: AtomicUsize,
    samples: AtomicUsize,
}

/// Samples every 10 ms until dropped (see the module docs).
/// Waits until the pool holds MAX idle connections, not merely MAX backends: a backend still in
/// its startup shows in pg_stat_activity, and freezing it would leave that connect hanging.
async fn all_idle(t: &Setup) {
    assert!(
        crate::eventually(Duration::from_secs(5), || async {
            let stats = t.pool.stats().await.expect("stats");
            stats.idle == MAX
                && stats.connecting == 0
                && crate::backends(&t.monitor, &t.app).await.len() == MAX
        })
        .await,
        "the pool opened its {MAX} connections"
    );
}

struct Sampler {
    peaks: Arc<Peaks>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    async fn start(setup: &Setup) -> Sampler {
        let peaks = Arc::new(Peaks::default());
        let stop = Arc::new(AtomicBool::new(false));
        let port = setup.port;
        let monitor = setup.monitor.clone();
        let app = setup.app.clone();
        let frozen = setup.frozen.clone();
        let (p, s) = (peaks.clone(), stop.clone());
        let others = setup.others.clone();
        let task = tokio::spawn(async move {
            let mut previous = HashSet::new();
            while !s.load(Ordering::Relaxed) {
                // A connection is a socket seen accepted in two samples in a row: a cancel
                // request to a live server is accepted for well under a millisecond.
                let now: HashSet<u16> = own_sockets_to(port).difference(&others).copied().collect();
                let sockets = now.intersection(&previous).count();
                previous = now;
                p.sockets.fetch_max(sockets, Ordering::Relaxed);
                // The monitor's query waits while the whole server is frozen: skip that sample.
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&app];
                let query = monitor.query(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                    &params,
                );
                let answer = tokio::time::timeout(Duration::from_millis(50), query).await;
                if let Ok(Ok(rows)) = answer {
                    let frozen = frozen.lock().expect("frozen").clone();
                    let live = rows
                        .iter()
                        .filter(|r| !frozen.contains(&r.get::<_, i32>(0)))
                        .count();
                    p.backends.fetch_max(live, Ordering::Relaxed);
                }
                p.samples.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Sampler { peaks, stop, task }
    }

    /// Stops sampling and checks the peaks against `max_size`.
    async fn finish(self, max_size: usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("sampler");
        let p = &self.peaks;
        let (sockets, backends) = (
            p.sockets.load(Ordering::Relaxed),
            p.backends.load(Ordering::Relaxed),
        );
        eprintln!(
            "sampler: {} samples, at most {sockets} sockets and {backends} backends",
            p.samples.load(Ordering::Relaxed)
        );
        assert!(p.samples.load(Ordering::Relaxed) > 10, "the sampler ran");
        assert!(
            sockets <= max_size,
            "this process held {sockets} sockets to the server for a pool of {max_size}"
        );
        assert!(
            backends <= max_size,
            "the server saw {backends} backends (not counting frozen ones) for a pool of {max_size}"
        );
    }
}

/// The local ports of the connections this process holds to `port` on the loopback that a server
/// process has accepted (matched by inode, from `/proc`): established, and with the server's end
/// owned by a backend. A connection still in the server's accept queue (a cancel request or a
/// connect waiting on a frozen postmaster) has no backend yet and is not counted.
fn own_sockets_to(port: u16) -> HashSet<u16> {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return HashSet::new();
    };
    let inodes: HashSet<u64> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            link.strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect();
    let Ok(table) = std::fs::read_to_string("/proc/self/net/tcp") else {
        return HashSet::new();
    };
    let port_of = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    // (local port, remote port, established, inode) of every row.
    let rows: Vec<(u16, u16, bool, u64)> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some((
                port_of(f.get(1)?)?,
                port_of(f.get(2)?)?,
                *f.get(3)? == "01",
                f.get(9)?.parse().ok()?,
            ))
        })
        .collect();
    let accepted: HashSet<u16> = rows
        .iter()
        .filter(|(local, _, established, inode)| *local == port && *established && *inode != 0)
        .map(|(_, client, _, _)| *client)
        .collect();
    rows.iter()
        .filter(|(local, remote, established, inode)| {
            *remote == port && *established && inodes.contains(inode) && accepted.contains(local)
        })
        .map(|(local, _, _, _)| *local)
        .collect()
}

/// A cluster of the test's own, a database on it, a pool on that and a monitor connection.
struct Setup {
    cluster: Cluster,
    pool: Pool,
    monitor: Arc<tokio_postgres::Client>,
    /// This process's connections to the cluster that are not the pool's (the monitor's, the
    /// test harness's), by local port: taken before the pool opened any.
    others: Arc<HashSet<u16>>,
    app: String,
    port: u16,
    /// Pids the test froze, which the sampler leaves out.
    frozen: Arc<Mutex<Vec<i32>>>,
    _db: actor_orm::testing::TestDatabase,
}

const MAX: usize = 4;

async fn setup(hint: &str, configure: impl FnOnce(PoolBuilder) -> PoolBuilder) -> Option<Setup> {
    let cluster = crate::own_cluster().await?;
    let db = cluster.create_database(hint).await.expect("database");
    let monitor = Arc::new(db.connect().await.expect("monitor"));
    monitor
        .batch_execute("CREATE TABLE acked (id bigint PRIMARY KEY)")
        .await
        .expect("table");
    let port = cluster.config().get_ports()[0];
    let others = Arc::new(own_sockets_to(port));
    let pool = crate::pool_on(&db, |b| configure(b.max_size(MAX))).await;
    Some(Setup {
        app: db.name().to_owned(),
        cluster,
        pool,
        monitor,
        others,
        port,
        frozen: Arc::default(),
        _db: db,
    })
}

impl Setup {
    /// Freezes `pids` (and leaves them out of the sampler's backend count).
    fn freeze(&self, pids: &[i32]) -> Frozen {
        self.frozen.lock().expect("frozen").extend(pids);
        Frozen::freeze(pids)
    }

    /// Every process of the cluster: the postmaster first, then its children.
    fn server_processes(&self) -> Vec<i32> {
        let postmaster = self.cluster.postmaster_pid().expect("postmaster") as i32;
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok());
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Whether the server still has backend `pid`.
    async fn has_backend(&self, pid: i32) -> bool {
        self.monitor
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .await
            .expect("pg_stat_activity")
            .get::<_, i64>(0)
            > 0
    }
}

/// The backend pid of a new session's connection, read within `limit`, on a session closed
/// afterwards.
async fn read_pid(pool: &Pool, limit: Duration) -> Result<i32, String> {
    let work = async {
        let s = pool.session().await?;
        let rows = s
            .raw_rows_autocommit("SELECT pg_backend_pid()", vec![])
            .await?;
        s.close().await?;
        Ok::<i32, Error>(rows[0].get(0))
    };
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(pid)) => Ok(pid),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// The backend of a session that holds its connection.
async fn pid_of(session: &actor_orm::Session) -> i32 {
    session
        .raw_rows_autocommit("SELECT pg_backend_pid()", vec![])
        .await
        .expect("pid")[0]
        .get(0)
}

/// Runs `rounds` rounds of `MAX` concurrent reads that each take a moment on the server, and
/// returns the errors: a cancel landing late would show here as 57014 on someone else's
/// statement.
async fn busy_reads(pool: &Pool, rounds: usize) -> Vec<String> {
    let mut errors = Vec::new();
    for _ in 0..rounds {
        let reads = (0..MAX).map(|_| {
            let pool = pool.clone();
            async move {
                let s = pool.session().await?;
                s.raw_rows_autocommit("SELECT pg_sleep(0.05)", vec![])
                    .await?;
                s.close().await
            }
        });
        for r in crate::join_all(reads).await {
            if let Err(e) = r {
                errors.push(e.to_string());
            }
        }
    }
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_frozen_mid_read_is_never_handed_out_again() {
    let Some(t) = setup("hang_mid_read", |b| b.reset_timeout(Duration::from_secs(1))).await else {
        return;
    };
    let sampler = Sampler::start(&t).await;
    let a = t.pool.session().await.expect("session");
    let pid = pid_of(&a).await;
    let frozen = t.freeze(&[pid]);
    // The caller gives up on a read the frozen backend never answers, and drops the session.
    let read = a.raw_rows_autocommit("SELECT 1", vec![]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), read)
            .await
            .is_err()
    );
    drop(a);

    // 100 reads in the next seconds, four at a time: every one answers, none on the frozen
    // backend. Before the fix the connection went straight back to idle and was handed out next.
    let pool = t.pool.clone();
    let reads = (0..MAX).map(|_| {
        let pool = pool.clone();
        async move {
            let mut pids = Vec::new();
            for _ in 0..25 {
                pids.push(read_pid(&pool, Duration::from_secs(2)).await);
            }
            pids
        }
    });
    let results: Vec<Result<i32, String>> =
        crate::join_all(reads).await.into_iter().flatten().collect();
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "reads failed: {failed:?}");
    assert!(results.iter().all(|r| r.as_ref().ok() != Some(&pid)));

    let stats = crate::settled(&t.pool).await;
    assert!(
        stats.reset_failures >= 1,
        "the connection was discarded when its reset got no answer: {stats:?}"
    );
    // Resumed: the late cancel lands on the frozen backend's own statement, and the backend
    // leaves (its socket is closed). No statement of anyone else is cancelled.
    frozen.thaw();
    assert!(
        crate::eventually(Duration::from_secs(5), || async {
            !t.has_backend(pid).await
        })
        .await,
        "the resumed backend found its socket closed and left"
    );
    let errors = busy_reads(&t.pool, 5).await;
    assert!(errors.is_empty(), "after the resume: {errors:?}");
    sampler.finish(MAX).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_frozen_during_the_rollback_of_a_dropped_session_is_discarded() {
    let Some(t) = setup("hang_rollback", |b| b.reset_timeout(Duration::from_secs(1))).await else {
        return;
    };
    let sampler = Sampler::start(&t).await;
    let a = t.pool.session().await.expect("session");
    a.begin().await.expect("begin");
    a.raw_execute("INSERT INTO acked VALUES (1)", vec![])
        .await
        .expect("insert");
    let pid: i32 = a
        .raw_rows("SELECT pg_backend_pid()", vec![])
        .await
        .expect("pid")[0]
        .get(0);
    let frozen = t.freeze(&[pid]);
    // Dropped inside its transaction: the ROLLBACK goes out and is never answered.
    drop(a);
    let started = Instant::now();
    // Others are served meanwhile, never by the frozen backend.
    let mut served = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let got = read_pid(&t.pool, Duration::from_secs(2)).await;
        assert!(got.is_ok() && got != Ok(pid), "{got:?}");
        served += 1;
    }
    assert!(served > 0);
    let stats = crate::settled(&t.pool).await;
    assert_eq!(
        stats.reset_failures, 1,
        "discarded after reset_timeout: {stats:?}"
    );
    assert_eq!(stats.in_use + stats.resetting, 0, "{stats:?}");
    frozen.thaw();
    assert!(
        crate::eventually(Duration::from_secs(5), || async {
            !t.has_backend(pid).await
        })
        .await,
        "the resumed backend found its socket closed and left"
    );
    let n: i64 = t
        .monitor
        .query_one("SELECT count(*) FROM acked", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0, "nothing the session did not commit was committed");
    sampler.finish(MAX).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_idle_backend_is_frozen_new_sessions_get_new_connections() {
    let check = Duration::from_millis(500);
    let Some(t) = setup("hang_idle", |b| {
        b.min_idle(MAX)
            .health_check_after(Duration::from_millis(100))
            .health_check_timeout(check)
    })
    .await
    else {
        return;
    };
    all_idle(&t).await;
    let sampler = Sampler::start(&t).await;
    let pids: Vec<i32> = crate::backends(&t.monitor, &t.app)
        .await
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    let frozen = t.freeze(&pids);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Ten sessions, each giving its read 5 s: every one is served by a new connection once the
    // health checks of the frozen ones time out.
    let started = Instant::now();
    let pool = t.pool.clone();
    let reads = (0..10).map(|_| {
        let pool = pool.clone();
        async move { read_pid(&pool, Duration::from_secs(5)).await }
    });
    let results = crate::join_all(reads).await;
    eprintln!(
        "10 sessions served {:?} after every idle backend froze (health_check_timeout {check:?})",
        started.elapsed()
    );
    for r in &results {
        assert!(
            matches!(r, Ok(p) if !pids.contains(p)),
            "a new connection served it: {r:?}"
        );
    }
    let stats = crate::settled(&t.pool).await;
    assert!(stats.checks >= MAX as u64, "{stats:?}");
    frozen.thaw();
    for pid in pids {
        assert!(
            crate::eventually(Duration::from_secs(5), || async {
                !t.has_backend(pid).await
            })
            .await,
            "the resumed backend {pid} found its socket closed and left"
        );
    }
    sampler.finish(MAX).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_server_frozen_under_load_keeps_every_timeout_and_every_commit() {
    let Some(t) = setup("hang_server", |b| {
        b.acquire_timeout(Duration::from_secs(1))
            .reset_timeout(Duration::from_secs(1))
    })
    .await
    else {
        return;
    };
    let sampler = Sampler::start(&t).await;
    let limit = Duration::from_millis(500);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
    let successes = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let next = Arc::new(std::sync::atomic::AtomicI64::new(1));
    let worst = Arc::new(Mutex::new(Duration::ZERO));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (pool, stop, acked, successes, next, worst) = (
            t.pool.clone(),
            stop.clone(),
            acked.clone(),
            successes.clone(),
            next.clone(),
            worst.clone(),
        );
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let id = next.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let work = async {
                    let s = pool.session().await?;
                    if w % 2 == 0 {
                        s.raw_execute("INSERT INTO acked VALUES ($1)", vec![Value::from(id)])
                            .await?;
                        s.commit().await?;
                    } else {
                        s.raw_rows_autocommit("SELECT count(*) FROM acked", vec![])
                            .await?;
                    }
                    s.close().await
                };
                let outcome = tokio::time::timeout(limit, work).await;
                let took = started.elapsed();
                {
                    let mut worst = worst.lock().expect("worst");
                    *worst = (*worst).max(took);
                }
                match outcome {
                    Ok(Ok(())) => {
                        if w % 2 == 0 {
                            acked.lock().expect("acked").push(id);
                        }
                        successes.lock().expect("successes").push(Instant::now());
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let frozen = t.freeze(&t.server_processes());
    let froze_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let resumed_at = Instant::now();
    frozen.thaw();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let successes = successes.lock().expect("successes").clone();
    let first_after = successes
        .iter()
        .filter(|s| **s > resumed_at)
        .min()
        .map(|s| s.duration_since(resumed_at));
    let during = successes
        .iter()
        .filter(|s| **s > froze_at + limit && **s < resumed_at)
        .count();
    let worst = *worst.lock().expect("worst");
    eprintln!(
        "server frozen 10 s: worst call {worst:?} (timeout {limit:?}), first success {first_after:?} after the resume, {} successes in all",
        successes.len()
    );
    assert_eq!(during, 0, "nothing can succeed while the server is frozen");
    // A bound, not a speed claim: a call that waited on the frozen server would take 10 s.
    assert!(
        worst < limit + Duration::from_secs(2),
        "every caller's timeout held: worst {worst:?}"
    );
    assert!(first_after.is_some(), "the pool recovered after the resume");
    let acked = acked.lock().expect("acked").clone();
    assert!(!acked.is_empty());
    let present: i64 = t
        .monitor
        .query_one("SELECT count(*) FROM acked WHERE id = ANY($1)", &[&acked])
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        present as usize,
        acked.len(),
        "every acknowledged commit is present"
    );
    sampler.finish(MAX).await;
}

/// A cancel request the server has not acted on yet must not land on someone else's statement.
/// The postmaster alone is frozen: a cancel request is then written into its socket's queue and
/// acted on only when it resumes. A session's statement is abandoned (and a cancel requested)
/// but finishes on its own; a pool that counted the request as done would hand that backend to
/// the next session, and the resumed postmaster's signal would cancel the next session's
/// statement. The connection is discarded instead: the server never confirmed the cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_not_yet_acted_on_never_lands_on_another_session() {
    // Plaintext: a TLS-capable cancel request first waits for the server's answer to its TLS
    // negotiation, which a frozen postmaster does not give; a plaintext one is only written.
    let Some(t) = setup("hang_late_cancel", |b| {
        b.min_idle(MAX)
            .reset_timeout(Duration::from_millis(500))
            .ssl_mode(actor_orm::SslMode::Disable)
    })
    .await
    else {
        return;
    };
    all_idle(&t).await;
    let sampler = Sampler::start(&t).await;
    let a = t.pool.session().await.expect("session");
    let pid = pid_of(&a).await;
    let postmaster = t.cluster.postmaster_pid().expect("postmaster") as i32;
    let frozen = t.freeze(&[postmaster]);
    // Abandoned after 50 ms; the statement itself ends normally at 300 ms.
    let slow = a.raw_rows_autocommit("SELECT pg_sleep(0.3)", vec![]);
    assert!(
        tokio::time::timeout(Duration::from_millis(50), slow)
            .await
            .is_err()
    );
    drop(a);
    // Other sessions keep every connection busy, before and after the postmaster resumes.
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..MAX)
        .map(|_| {
            let (pool, stop) = (t.pool.clone(), stop.clone());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let work = async {
                        let s = pool.session().await?;
                        let rows = s
                            .raw_rows_autocommit(
                                "SELECT pg_backend_pid() FROM pg_sleep(0.05)",
                                vec![],
                            )
                            .await?;
                        s.close().await?;
                        Ok::<i32, Error>(rows[0].get(0))
                    };
                    match tokio::time::timeout(Duration::from_secs(3), work).await {
                        Ok(r) => seen.push(r.map_err(|e| e.to_string())),
                        Err(_) => seen.push(Err("no answer within 3 s".into())),
                    }
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    frozen.thaw();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut seen = Vec::new();
    for w in workers {
        seen.extend(w.await.expect("worker"));
    }
    let failed: Vec<&String> = seen.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "statements failed: {failed:?}");
    assert!(
        seen.iter().all(|r| r.as_ref().ok() != Some(&pid)),
        "the backend with a cancel pending served another session"
    );
    eprintln!("late cancel: {} statements, none cancelled", seen.len());
    let stats = crate::settled(&t.pool).await;
    assert!(stats.reset_failures >= 1, "{stats:?}");
    sampler.finish(MAX).await;
}
