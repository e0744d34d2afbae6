//! Workload 15: a read replica. The same request cycle (session, point read, end) through a pool
//! with no replica and through one with a streaming replica of the benchmark server (started
//! here with `pg_basebackup -R`), where the session's read goes to the replica; and a
//! write-then-read loop whose read carries the writer's causal token.

use std::time::{Duration, Instant};

use actor_orm::testing::Cluster;

use crate::{N, Res, Results, interleaved, percentile, pool_cycles, us};

const W_CYCLE: &str = "15. read replica: request cycle (session, point read, end)";
const PRIMARY: &str = "actor-orm, primary only";
const ROUTED: &str = "actor-orm, read on the replica";

pub(crate) struct ReplicaBench {
    primary: actor_orm::Pool,
    routed: actor_orm::Pool,
    // Stopped (and removed) when the harness ends.
    _standby: Cluster,
}

impl ReplicaBench {
    /// A standby of `cluster`, and pools of `size` on database `dbname`: one on the primary
    /// alone, one with the standby as its replica (once it is in the rotation).
    pub(crate) async fn set_up(cluster: &Cluster, dbname: &str, size: usize) -> Res<ReplicaBench> {
        let standby = cluster.start_standby()?;
        let mut primary_config = cluster.config().clone();
        primary_config.dbname(dbname);
        let mut replica_config = standby.config().clone();
        replica_config.dbname(dbname);
        let routed = actor_orm::Pool::builder(primary_config.clone())
            .replica(replica_config)
            .max_size(size)
            .build()
            .await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !routed.replica_stats().iter().all(|r| r.in_rotation) {
            if Instant::now() > deadline {
                return Err("the replica did not join the rotation within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(ReplicaBench {
            primary: actor_orm::Pool::builder(primary_config)
                .max_size(size)
                .build()
                .await?,
            routed,
            _standby: standby,
        })
    }

    pub(crate) async fn round(&self, r: &mut Results) -> Res<()> {
        let before: u64 = self.routed.replica_stats().iter().map(|s| s.reads).sum();
        let systems = [(PRIMARY, &self.primary), (ROUTED, &self.routed)];
        let ops = pool_cycles(&systems, false);
        for (sys, l) in interleaved(N, ops).await? {
            r.add(W_CYCLE, "p50 µs", sys, us(percentile(&l, 0.5)));
        }
        let served = self
            .routed
            .replica_stats()
            .iter()
            .map(|s| s.reads)
            .sum::<u64>()
            - before;
        if served == 0 {
            return Err("workload 15: no read went to the replica".into());
        }
        Ok(())
    }
}

/// Workload 15's ratio.
pub(crate) fn ratios(r: &Results) -> Vec<(String, f64, &'static str)> {
    vec![(
        "request cycle read on a replica vs on the primary (lower is better)".into(),
        r.get(W_CYCLE, "p50 µs", ROUTED) / r.get(W_CYCLE, "p50 µs", PRIMARY),
        "(measured)",
    )]
}
