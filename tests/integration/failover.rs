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

/// `primary` and a streaming standby of it (`pg_basebackup -R`).
pub(crate) async fn with_standby(
    primary: actor_orm::testing::Cluster,
) -> (actor_orm::testing::Cluster, actor_orm::testing::Cluster) {
    tokio::task::spawn_blocking(move || {
        let standby = primary.start_standby().expect("standby");
        (primary, standby)
    })
    .await
    .expect("join")
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
    let (primary, standby) = with_standby(primary).await;
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

/// Whether the session's connection is to a standby, and the server's port.
async fn where_am_i(pool: &Pool) -> actor_orm::Result<(bool, i32)> {
    let s = pool.session().await?;
    let rows = s
        .raw_rows("SELECT pg_is_in_recovery(), inet_server_port()", vec![])
        .await?;
    s.close().await?;
    let row = rows.first().expect("a row");
    Ok((row.get(0), row.get(1)))
}

/// libpq's `target_session_attrs` pick the host: `read-only`, `standby` and `prefer-standby`
/// the standby, `read-write` the primary whatever the order, `prefer-standby` the primary when
/// no host is a standby. Then the standby is promoted beside the old primary, which is made
/// read-only (a demoted or fenced primary whose connections stay open): the first write refused
/// (`25006`, typed) makes the pool retire every connection to it, and the next write goes to the
/// new primary.
#[tokio::test]
async fn the_pool_picks_hosts_by_role_and_leaves_a_demoted_primary() {
    let Some(primary) = crate::own_cluster().await else {
        return;
    };
    let admin = primary.connect_to(None).await.expect("admin");
    admin
        .batch_execute("CREATE TABLE ledger (id bigint PRIMARY KEY, writer int NOT NULL)")
        .await
        .expect("table");
    let (primary, standby) = with_standby(primary).await;
    let (p1, p2) = (primary.port().expect("port"), standby.port().expect("port"));
    let pool_for = |hosts: &[u16], attrs: &str| {
        let ports: Vec<String> = hosts.iter().map(u16::to_string).collect();
        let hosts = vec!["127.0.0.1"; ports.len()].join(",");
        let url = format!(
            "host={hosts} port={} user=postgres dbname=postgres target_session_attrs={attrs}",
            ports.join(",")
        );
        async move {
            Pool::builder(url.as_str())
                .max_size(2)
                .acquire_timeout(Duration::from_secs(10))
                .build()
                .await
                .expect("pool")
        }
    };
    for (hosts, attrs, standby_expected) in [
        (&[p1, p2][..], "read-only", true),
        (&[p1, p2][..], "standby", true),
        (&[p1, p2][..], "prefer-standby", true),
        (&[p2, p1][..], "read-write", false),
        (&[p2, p1][..], "primary", false),
        (&[p1][..], "prefer-standby", false),
    ] {
        let pool = pool_for(hosts, attrs).await;
        let (on_standby, _) = where_am_i(&pool).await.expect("connect");
        assert_eq!(on_standby, standby_expected, "{attrs} over {hosts:?}");
    }

    // Split brain, then the old primary fenced read-only.
    let pool = pool_for(&[p1, p2], "read-write").await;
    assert_eq!(
        where_am_i(&pool).await.expect("read"),
        (false, i32::from(p1))
    );
    direct_to(p2, "postgres")
        .await
        .batch_execute("SELECT pg_promote(true, 30)")
        .await
        .expect("promote");
    for sql in [
        "ALTER SYSTEM SET default_transaction_read_only = on",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.expect(sql);
    }
    let write = |id: i64| {
        let pool = pool.clone();
        async move {
            let s = pool.session().await?;
            s.add(Entry { id, writer: 0 }).await?;
            s.commit().await?;
            s.close().await
        }
    };
    // The reload reaches the old primary's backends at their next statement.
    let mut refused = None;
    for id in 0..50 {
        match write(id).await {
            Ok(()) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("the fenced primary refused a write");
    assert_eq!(refused.code(), Some("25006"), "{refused:?}");
    write(1_000)
        .await
        .expect("the next write, on the new primary");
    let (on_standby, port) = where_am_i(&pool).await.expect("read");
    assert_eq!((on_standby, port), (false, i32::from(p2)));
    let n: i64 = direct_to(p2, "postgres")
        .await
        .query_one("SELECT count(*) FROM ledger WHERE id = 1000", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 1);
    drop((primary, standby));
}

async fn direct_to(port: u16, dbname: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname={dbname}"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect");
    tokio::spawn(conn);
    client
}
