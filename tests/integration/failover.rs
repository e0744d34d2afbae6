//! Failover: a pool given both servers (`host=a,b`, `target_session_attrs=read-write`) follows
//! the primary when its standby is promoted under load. Acknowledged commits are on the new
//! primary, a COMMIT whose answer was lost is reported as such, and reads carry on without the
//! caller trying again.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actor_orm::{Error, Model, Pool};

#[derive(Model, Clone, Debug, PartialEq)]
#[orm(table_name = "ledger")]
pub struct Entry {
    #[orm(primary_key)]
    pub id: i64,
    pub writer: i32,
}

/// What the writers saw.
#[derive(Default)]
struct Outcomes {
    committed: Vec<i64>,
    unknown: Vec<i64>,
    failed: Vec<String>,
}

async fn direct(port: u16) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=failover"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect");
    tokio::spawn(conn);
    client
}

/// A primary with a synchronous standby (so that an acknowledged commit is on both), 4 writers
/// and 2 readers on one pool naming both hosts; the primary crashes and the standby is
/// promoted.
#[tokio::test]
async fn promoting_the_standby_under_load_loses_no_acknowledged_commit() {
    let Some(primary) = crate::own_cluster().await else {
        return;
    };
    let admin = primary.connect_to(None).await.expect("admin");
    // One statement each: ALTER SYSTEM and CREATE DATABASE refuse a transaction block.
    for sql in [
        "CREATE DATABASE failover",
        "ALTER DATABASE failover SET synchronous_commit = on",
    ] {
        admin.batch_execute(sql).await.expect(sql);
    }
    let p1 = primary.port().expect("port");
    direct(p1)
        .await
        .batch_execute("CREATE TABLE ledger (id bigint PRIMARY KEY, writer int NOT NULL)")
        .await
        .expect("table");
    let (primary, standby) = tokio::task::spawn_blocking(move || {
        let standby = primary.start_standby().expect("standby");
        (primary, standby)
    })
    .await
    .expect("join");
    let p2 = standby.port().expect("port");
    // Synchronous from now on (before, a commit would wait for a standby not yet there).
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = '*'",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.expect(sql);
    }
    assert!(
        crate::eventually(Duration::from_secs(20), || async {
            admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'",
                    &[],
                )
                .await
                .is_ok_and(|r| r.get::<_, i64>(0) == 1)
        })
        .await,
        "the standby became synchronous"
    );
    drop(admin);

    let url = format!(
        "host=127.0.0.1,127.0.0.1 port={p1},{p2} user=postgres dbname=failover \
         target_session_attrs=read-write connect_timeout=2"
    );
    let pool = Pool::builder(url.as_str())
        .max_size(8)
        .acquire_timeout(Duration::from_secs(30))
        .build()
        .await
        .expect("pool");
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let mut writers = Vec::new();
    for w in 0..4i32 {
        let (pool, stop, outcomes) = (pool.clone(), stop.clone(), outcomes.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let id = i64::from(w) * 1_000_000 + i;
                let result = async {
                    let s = pool.session().await?;
                    s.add(Entry { id, writer: w }).await?;
                    s.commit().await?;
                    s.close().await
                }
                .await;
                let mut o = outcomes.lock().expect("lock");
                match result {
                    Ok(()) => o.committed.push(id),
                    Err(e) if e.is_commit_outcome_unknown() => o.unknown.push(id),
                    Err(e) => o.failed.push(e.to_string()),
                }
            }
        }));
    }
    let read_failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (pool, stop, failures, reads) = (
            pool.clone(),
            stop.clone(),
            read_failures.clone(),
            reads.clone(),
        );
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let result = async {
                    let s = pool.session().await?;
                    let n = s.count(Entry::query()).await?;
                    s.close().await?;
                    Ok::<i64, Error>(n)
                }
                .await;
                match result {
                    Ok(_) => {
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().expect("lock").push(e.to_string()),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = outcomes.lock().expect("lock").committed.len();
    assert!(before > 0, "writes went through before the failover");
    let mut primary = primary;
    let crashed = tokio::task::spawn_blocking(move || {
        primary.crash_server().expect("crash");
        primary
    })
    .await
    .expect("join");
    let promote = direct(p2).await;
    // Promoted, it has no standby of its own to wait for (the setting came with the backup).
    for sql in [
        "SELECT pg_promote(true, 30)",
        "ALTER SYSTEM RESET synchronous_standby_names",
        "SELECT pg_reload_conf()",
    ] {
        promote.batch_execute(sql).await.expect(sql);
    }
    let promoted = Instant::now();
    let reads_at_promote = reads.load(Ordering::Relaxed);
    let committed_at_promote = outcomes.lock().expect("lock").committed.len();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in writers.into_iter().chain(readers) {
        t.await.expect("join");
    }
    drop(crashed);

    let o = std::mem::take(&mut *outcomes.lock().expect("lock"));
    let on_new: HashSet<i64> = promote
        .query("SELECT id FROM ledger", &[])
        .await
        .expect("read the new primary")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let missing: Vec<_> = o
        .committed
        .iter()
        .filter(|id| !on_new.contains(id))
        .collect();
    let unknown_kept = o.unknown.iter().filter(|id| on_new.contains(id)).count();
    eprintln!(
        "failover: {} commits acknowledged ({before} before the crash), {} outcomes unknown ({unknown_kept} of them committed), {} writes failed, {} reads; {:?} after promotion",
        o.committed.len(),
        o.unknown.len(),
        o.failed.len(),
        reads.load(Ordering::Relaxed),
        promoted.elapsed()
    );
    assert!(
        missing.is_empty(),
        "acknowledged but not on the new primary: {missing:?}"
    );
    assert!(
        o.committed.len() > committed_at_promote,
        "writes resumed on the new primary"
    );
    assert!(
        reads.load(Ordering::Relaxed) > reads_at_promote,
        "reads resumed on the new primary"
    );
    let failures = read_failures.lock().expect("lock");
    assert!(
        failures.is_empty(),
        "reads failed (the caller would have had to retry): {:?}",
        &failures[..failures.len().min(3)]
    );
    // A write that failed outright (not at its COMMIT) is not on the new primary.
    for text in &o.failed {
        assert!(!text.contains("commit outcome unknown"), "{text}");
    }
}
