//! Workload 13: streaming 1,000,000 rows into models, each dropped once counted: actor-orm's
//! `stream` (one statement read as the consumer takes rows), SeaORM's `stream`, and raw
//! tokio-postgres `query_raw` with hand mapping (the floor); and the same rows as binary COPY data,
//! through actor-orm's `copy_out` and raw tokio-postgres's `copy_out`. Time and peak memory; five
//! trials interleaved and shuffled, the median trial reported.

use std::hint::black_box;
use std::time::Instant;

use actor_orm::Model;
use futures_util::StreamExt;
use sea_orm::EntityTrait;

use crate::{Res, Results, SEED, Systems, peak_of, shuffle};

const W: &str = "13. stream 1,000,000 rows (models, or COPY data)";
const ROWS: i64 = 1_000_000;
const TRIALS: usize = 5;
const SYSTEMS: [&str; 5] = [
    "actor-orm stream",
    "SeaORM stream",
    "raw: query_raw, mapped by hand",
    "actor-orm copy_out (binary)",
    "raw: COPY TO STDOUT BINARY",
];

#[derive(Model, Clone, Debug)]
#[orm(table_name = "bench_stream")]
struct Streamed {
    #[orm(primary_key)]
    id: i64,
    name: String,
    email: Option<String>,
    age: i32,
}

mod sea_stream {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bench_stream")]
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

/// The table: 1,000,000 rows shaped like workload 7's.
pub(crate) async fn set_up(db: &tokio_postgres::Client) -> Res<()> {
    db.batch_execute(&format!(
        "CREATE TABLE bench_stream (id bigint PRIMARY KEY, name text NOT NULL, email text, age integer NOT NULL);
         INSERT INTO bench_stream SELECT g, 'user' || g, 'user' || g || '@example.com', g % 90
           FROM generate_series(1, {ROWS}) g"
    ))
    .await?;
    db.batch_execute("VACUUM ANALYZE bench_stream").await?;
    Ok(())
}

async fn one(s: &Systems, system: usize) -> Res<i64> {
    let mut n = 0;
    match system {
        0 => {
            let session = s.orm.session().await?;
            let mut rows = session.stream(Streamed::query()).await?;
            while let Some(row) = rows.next().await {
                black_box(row?);
                n += 1;
            }
            drop(rows);
            session.close().await?;
        }
        1 => {
            let mut rows = sea_stream::Entity::find().stream(&s.sea).await?;
            while let Some(row) = rows.next().await {
                black_box(row?);
                n += 1;
            }
        }
        3 => {
            let session = s.orm.session().await?;
            let mut data = session
                .copy_out(Streamed::query(), actor_orm::CopyFormat::Binary)
                .await?;
            while let Some(chunk) = data.next().await {
                black_box(chunk?);
                n += 1;
            }
            drop(data);
            session.close().await?;
            // The header comes with the first row; the trailer is a message of its own.
            n -= 1;
        }
        4 => {
            let data = s
                .raw
                .copy_out("COPY (SELECT id, name, email, age FROM bench_stream) TO STDOUT (FORMAT binary)")
                .await?;
            let mut data = std::pin::pin!(data);
            while let Some(chunk) = data.next().await {
                black_box(chunk?);
                n += 1;
            }
            n -= 1;
        }
        _ => {
            let rows = s
                .raw
                .query_raw(
                    "SELECT id, name, email, age FROM bench_stream",
                    std::iter::empty::<i32>(),
                )
                .await?;
            let mut rows = std::pin::pin!(rows);
            while let Some(row) = rows.next().await {
                let row = row?;
                black_box(Streamed {
                    id: row.try_get(0)?,
                    name: row.try_get(1)?,
                    email: row.try_get(2)?,
                    age: row.try_get(3)?,
                });
                n += 1;
            }
        }
    }
    Ok(n)
}

pub(crate) async fn round(s: &Systems, r: &mut Results) -> Res<()> {
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); SYSTEMS.len()];
    let mut peaks: Vec<Vec<f64>> = vec![Vec::new(); SYSTEMS.len()];
    let mut order: Vec<usize> = (0..SYSTEMS.len()).collect();
    let mut seed = SEED ^ 13;
    for _ in 0..TRIALS {
        shuffle(&mut order, &mut seed);
        for &i in &order {
            let (n, peak) = peak_of(async {
                let t = Instant::now();
                let n = one(s, i).await;
                (n, t.elapsed())
            })
            .await;
            let (n, took) = n;
            assert_eq!(n?, ROWS, "{}: every row", SYSTEMS[i]);
            times[i].push(took.as_secs_f64() * 1e3);
            peaks[i].push(peak as f64 / 1e6);
        }
    }
    for (i, system) in SYSTEMS.into_iter().enumerate() {
        times[i].sort_by(f64::total_cmp);
        peaks[i].sort_by(f64::total_cmp);
        r.add(W, "ms", system, times[i][TRIALS / 2]);
        r.add(W, "peak MB", system, peaks[i][TRIALS / 2]);
    }
    Ok(())
}

/// Workload 13's ratios.
pub(crate) fn ratios(r: &Results) -> Vec<(String, f64, &'static str)> {
    vec![
        (
            "stream 1,000,000 rows: time vs raw query_raw (lower is better)".into(),
            r.get(W, "ms", SYSTEMS[0]) / r.get(W, "ms", SYSTEMS[2]),
            "≤ 1.10×",
        ),
        (
            "stream 1,000,000 rows: time vs SeaORM stream (lower is better)".into(),
            r.get(W, "ms", SYSTEMS[0]) / r.get(W, "ms", SYSTEMS[1]),
            "(measured)",
        ),
        (
            "copy_out 1,000,000 rows (binary): time vs raw COPY TO STDOUT (lower is better)".into(),
            r.get(W, "ms", SYSTEMS[3]) / r.get(W, "ms", SYSTEMS[4]),
            "(measured)",
        ),
        (
            "stream 1,000,000 rows: actor-orm peak allocated, MB".into(),
            r.get(W, "peak MB", SYSTEMS[0]),
            "≤ 16 MB",
        ),
    ]
}
