//! Workload 14: through PgBouncer. The same point read and the same request cycle (session, read,
//! commit, end) through three actor-orm pools on the benchmark database: straight to the server
//! with prepared statements (the default there), straight with unnamed statements, and through a
//! PgBouncer in transaction mode (started here, in front of the same server), where each
//! connection finds the pooler and sends unnamed statements.

use std::hint::black_box;

use actor_orm::StatementMode;
use actor_orm::testing::{PgBouncer, PgBouncerOptions};

use crate::{
    BenchUser, N, Res, Results, by_hand, interleaved, key, op, percentile, pool_cycles, us,
};

const W_READ: &str = "14. through PgBouncer: point read";
const W_CYCLE: &str = "14. through PgBouncer: request cycle";
const DIRECT: &str = "actor-orm direct, prepared";
const UNNAMED: &str = "actor-orm direct, unnamed";
const BOUNCED: &str = "actor-orm through PgBouncer (unnamed)";
/// The pooler's own cost: raw tokio-postgres with unnamed statements (`query_typed`), straight to
/// the server and through the same PgBouncer.
const RAW_DIRECT: &str = "floor: raw tokio-postgres direct, unnamed";
const RAW_BOUNCED: &str = "floor: raw tokio-postgres through PgBouncer, unnamed";

pub(crate) struct PoolerBench {
    direct: actor_orm::Pool,
    unnamed: actor_orm::Pool,
    bounced: actor_orm::Pool,
    raw_direct: tokio_postgres::Client,
    raw_bounced: tokio_postgres::Client,
    // Stopped (and removed) when the harness ends.
    _bouncer: PgBouncer,
}

impl PoolerBench {
    /// Pools of `size` on database `dbname` of the server `pg` points at, and a PgBouncer with as
    /// many server connections in front of it.
    pub(crate) async fn set_up(
        pg: &tokio_postgres::Config,
        dbname: &str,
        size: usize,
    ) -> Res<PoolerBench> {
        let server = pg.clone();
        let pool_size = u32::try_from(size)?;
        let bouncer = tokio::task::spawn_blocking(move || {
            PgBouncer::start(
                &server,
                PgBouncerOptions::new().default_pool_size(pool_size),
            )
        })
        .await??;
        let build = |config: tokio_postgres::Config, mode: Option<StatementMode>| async move {
            let mut builder = actor_orm::Pool::builder(config).max_size(size);
            if let Some(mode) = mode {
                builder = builder.statement_mode(mode);
            }
            builder.build().await
        };
        let mut direct_config = pg.clone();
        direct_config.dbname(dbname);
        let raw = |config: tokio_postgres::Config| async move {
            let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            Res::Ok(client)
        };
        Ok(PoolerBench {
            direct: build(direct_config.clone(), None).await?,
            unnamed: build(direct_config.clone(), Some(StatementMode::Unnamed)).await?,
            bounced: build(bouncer.config_for(dbname), None).await?,
            raw_direct: raw(direct_config).await?,
            raw_bounced: raw(bouncer.config_for(dbname)).await?,
            _bouncer: bouncer,
        })
    }

    pub(crate) async fn round(&self, r: &mut Results) -> Res<()> {
        let systems = [
            (DIRECT, &self.direct),
            (UNNAMED, &self.unnamed),
            (BOUNCED, &self.bounced),
        ];
        // Point reads in one session of each pool.
        let mut sessions = Vec::new();
        for (_, pool) in &systems {
            sessions.push(pool.session().await?);
        }
        let mut ops: Vec<_> = systems
            .iter()
            .zip(&sessions)
            .map(|((name, _), session)| {
                (
                    *name,
                    op(move |i| async move {
                        black_box(session.get::<BenchUser>(key(i)).await?);
                        Ok(())
                    }),
                )
            })
            .collect();
        for (name, client) in [
            (RAW_DIRECT, &self.raw_direct),
            (RAW_BOUNCED, &self.raw_bounced),
        ] {
            ops.push((
                name,
                op(move |i| async move {
                    let k = key(i);
                    let rows = client
                        .query_typed(
                            "SELECT id, name, email, age FROM bench_users WHERE id = $1",
                            &[(&k, tokio_postgres::types::Type::INT8)],
                        )
                        .await?;
                    black_box(rows.first().map(by_hand));
                    Ok(())
                }),
            ));
        }
        for (sys, l) in interleaved(N, ops).await? {
            r.add(W_READ, "p50 µs", sys, us(percentile(&l, 0.5)));
        }
        for s in sessions {
            s.close().await?;
        }
        // Request cycles.
        let ops = pool_cycles(&systems, true);
        for (sys, l) in interleaved(N, ops).await? {
            r.add(W_CYCLE, "p50 µs", sys, us(percentile(&l, 0.5)));
        }
        Ok(())
    }
}

/// Workload 14's ratios.
pub(crate) fn ratios(r: &Results) -> Vec<(String, f64, &'static str)> {
    vec![
        (
            "point read through PgBouncer (unnamed) vs direct unnamed (lower is better)".into(),
            r.get(W_READ, "p50 µs", BOUNCED) / r.get(W_READ, "p50 µs", UNNAMED),
            "≤ 1.05×",
        ),
        (
            "floor: point read of raw tokio-postgres through PgBouncer vs direct, unnamed \
             statements both (PgBouncer's own cost; lower is better)"
                .into(),
            r.get(W_READ, "p50 µs", RAW_BOUNCED) / r.get(W_READ, "p50 µs", RAW_DIRECT),
            "(floor)",
        ),
        (
            "point read through PgBouncer vs direct prepared, the default each way (lower is better)"
                .into(),
            r.get(W_READ, "p50 µs", BOUNCED) / r.get(W_READ, "p50 µs", DIRECT),
            "(measured)",
        ),
        (
            "request cycle through PgBouncer vs direct unnamed (lower is better)".into(),
            r.get(W_CYCLE, "p50 µs", BOUNCED) / r.get(W_CYCLE, "p50 µs", UNNAMED),
            "(measured)",
        ),
    ]
}
