//! Read replicas with read-your-writes: a session's reads go to a replica only once it has
//! replayed the session's causal token (its last commit's WAL position, or one carried over from
//! an earlier request); otherwise to the primary. A replica too far behind leaves the rotation.

use std::time::Duration;

use actor_orm::{Model, Pool};

/// Waits until every replica of `pool` is in the rotation (or out of it, with `wanted` false),
/// failing with `what` and the replicas' numbers after `limit`.
async fn in_rotation_within(pool: &Pool, wanted: bool, limit: Duration, what: &str) {
    assert!(
        crate::eventually(limit, || async {
            pool.replica_stats().iter().all(|r| r.in_rotation == wanted)
        })
        .await,
        "{what}: {:?}",
        pool.replica_stats()
    );
}

#[derive(Model, Clone, Debug, PartialEq)]
#[orm(table_name = "notes")]
pub struct Note {
    #[orm(primary_key)]
    pub id: i64,
    pub body: String,
}

/// 1,000 write-then-read loops (the read in a new session, as the next request would, with the
/// writer's causal token): with replay paused on the replica, none reads stale data and every
/// read goes to the primary, and the replica leaves the rotation; with replay running again it
/// comes back and most reads go to it.
#[tokio::test]
async fn reads_follow_the_causal_token_and_never_see_stale_data() {
    let Some(primary) = crate::own_cluster().await else {
        return;
    };
    let admin = primary.connect_to(None).await.expect("admin");
    // Commits flushed (and so sent to the replica) at once, as on a production server; the
    // throwaway cluster's default is off.
    for sql in [
        "CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL)",
        "ALTER DATABASE postgres SET synchronous_commit = on",
    ] {
        admin.batch_execute(sql).await.expect(sql);
    }
    let (primary, replica) = crate::failover::with_standby(primary).await;
    let on_replica = replica.connect_to(None).await.expect("replica");
    let pool = Pool::builder(primary.config())
        .replica(replica.config())
        .max_size(4)
        .replica_lag_limit(Duration::from_millis(500))
        .replica_check_interval(Duration::from_millis(50))
        .build()
        .await
        .expect("pool");
    in_rotation_within(
        &pool,
        true,
        Duration::from_secs(10),
        "the replica joined the rotation",
    )
    .await;

    let round = |pool: Pool, range: std::ops::Range<i64>| async move {
        let mut stale = 0;
        for id in range {
            let w = pool.session().await.expect("session");
            w.add(Note {
                id,
                body: format!("note {id}"),
            })
            .await
            .expect("add");
            w.commit().await.expect("commit");
            let token = w
                .causal_token()
                .await
                .expect("token")
                .expect("a commit's token");
            w.close().await.expect("close");
            let r = pool.session().await.expect("session");
            r.read_after(token).await.expect("token");
            if r.get::<Note>(id).await.expect("read").is_none() {
                stale += 1;
            }
            r.close().await.expect("close");
        }
        stale
    };

    on_replica
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .expect("pause");
    let served_before = replica_reads(&pool);
    let stale = round(pool.clone(), 0..1_000).await;
    let served_paused: u64 = replica_reads(&pool) - served_before;
    assert_eq!(stale, 0, "stale reads with replay paused");
    assert_eq!(served_paused, 0, "the paused replica served reads");
    in_rotation_within(
        &pool,
        false,
        Duration::from_secs(5),
        "a replica past the lag limit left the rotation",
    )
    .await;

    on_replica
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .expect("resume");
    in_rotation_within(
        &pool,
        true,
        Duration::from_secs(10),
        "the replica came back",
    )
    .await;
    let primary_before = pool.primary_reads();
    let served_before = replica_reads(&pool);
    let stale = round(pool.clone(), 1_000..2_000).await;
    let to_replica = replica_reads(&pool) - served_before;
    let to_primary = pool.primary_reads() - primary_before;
    eprintln!("replay running: {to_replica} reads on the replica, {to_primary} on the primary");
    assert_eq!(stale, 0, "stale reads with replay running");
    assert!(
        to_replica > to_primary,
        "most reads go to the replica: {to_replica} vs {to_primary}"
    );
    // Without a token, a read goes to the replica at once.
    let s = pool.session().await.expect("session");
    assert_eq!(s.count(Note::query()).await.expect("count"), 2_000);
    s.close().await.expect("close");

    // The replica goes down: reads go on (on the primary), it leaves the rotation, and comes
    // back once it is up again.
    drop(on_replica);
    let mut replica = tokio::task::spawn_blocking(move || {
        let mut replica = replica;
        replica.stop_server().expect("stop the replica");
        replica
    })
    .await
    .expect("join");
    for _ in 0..20 {
        assert_eq!(count_notes(&pool).await, 2_000);
    }
    assert!(
        crate::eventually(Duration::from_secs(5), || async {
            pool.replica_stats()
                .iter()
                .all(|r| !r.in_rotation && r.lag.is_none())
        })
        .await,
        "a replica that does not answer left the rotation: {:?}",
        pool.replica_stats()
    );
    let replica = tokio::task::spawn_blocking(move || {
        replica.start_server().expect("start the replica");
        replica
    })
    .await
    .expect("join");
    in_rotation_within(
        &pool,
        true,
        Duration::from_secs(10),
        "the replica came back",
    )
    .await;
    let served_before = replica_reads(&pool);
    assert_eq!(count_notes(&pool).await, 2_000);
    let served = replica_reads(&pool);
    assert!(served > served_before, "reads on the replica again");
    drop((primary, replica));
}

/// `SELECT count(*) FROM notes` in a session of its own (no token: a replica may serve it).
async fn count_notes(pool: &Pool) -> i64 {
    let s = pool.session().await.expect("session");
    let n = s.count(Note::query()).await.expect("count");
    s.close().await.expect("close");
    n
}

/// Reads served by the pool's replicas so far.
fn replica_reads(pool: &actor_orm::Pool) -> u64 {
    pool.replica_stats().iter().map(|r| r.reads).sum()
}
