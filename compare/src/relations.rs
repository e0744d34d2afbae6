//! Workload 11: eager loading. 1,000 parents with 10 children each, loaded with their children:
//! actor-orm's `load` (two statements), SeaORM's loader (`load_many`, two statements), and raw
//! tokio-postgres with one LEFT JOIN and grouping by hand. Trials interleaved and shuffled, the
//! median trial reported.

use std::hint::black_box;
use std::time::Instant;

use actor_orm::Model;
use sea_orm::{EntityTrait, LoaderTrait};

use crate::{Res, Results, SEED, Systems, shuffle};

const W: &str = "11. load 1,000 parents with 10 children each";
const PARENTS: i64 = 1_000;
const CHILDREN_EACH: i64 = 10;
const TRIALS: usize = 7;
const SYSTEMS: [&str; 3] = [
    "actor-orm load (2 statements)",
    "SeaORM load_many (2 statements)",
    "raw: one LEFT JOIN, grouped by hand",
];

#[derive(Model, Clone, Debug)]
#[orm(
    table_name = "bench_parent",
    has_many(name = "children", model = Child, by = "parent_id")
)]
pub(crate) struct Parent {
    #[orm(primary_key)]
    id: i64,
    name: String,
}

#[derive(Model, Clone, Debug)]
#[orm(table_name = "bench_child")]
pub(crate) struct Child {
    #[orm(primary_key)]
    id: i64,
    #[orm(references = Parent)]
    parent_id: i64,
    name: String,
    age: i32,
}

mod sea_parent {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bench_parent")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub name: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        #[sea_orm(has_many = "super::sea_child::Entity")]
        Child,
    }

    impl Related<super::sea_child::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::Child.def()
        }
    }

    impl ActiveModelBehavior for ActiveModel {}
}

mod sea_child {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "bench_child")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub parent_id: i64,
        pub name: String,
        pub age: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        #[sea_orm(
            belongs_to = "super::sea_parent::Entity",
            from = "Column::ParentId",
            to = "super::sea_parent::Column::Id"
        )]
        Parent,
    }

    impl Related<super::sea_parent::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::Parent.def()
        }
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// Creates and fills the two tables.
pub(crate) async fn set_up(raw: &tokio_postgres::Client) -> Res<()> {
    raw.batch_execute(&format!(
        "CREATE TABLE bench_parent (id bigint PRIMARY KEY, name text NOT NULL); \
         CREATE TABLE bench_child (id bigint PRIMARY KEY, \
             parent_id bigint NOT NULL REFERENCES bench_parent, name text NOT NULL, age integer NOT NULL); \
         CREATE INDEX ON bench_child (parent_id); \
         INSERT INTO bench_parent SELECT g, 'parent' || g FROM generate_series(1, {PARENTS}) g; \
         INSERT INTO bench_child SELECT g, (g - 1) / {CHILDREN_EACH} + 1, 'child' || g, g % 90 \
             FROM generate_series(1, {PARENTS} * {CHILDREN_EACH}) g; \
         ANALYZE bench_parent; ANALYZE bench_child"
    ))
    .await?;
    Ok(())
}

/// One trial of system `i`: its time in ms, and how many children it loaded.
async fn trial(s: &Systems, i: usize) -> Res<(f64, usize)> {
    let t = Instant::now();
    let n = match i {
        0 => {
            // A new session each trial: nothing in its identity map.
            let session = s.orm.session().await?;
            let loaded = session.load(Parent::query(), Parent::CHILDREN).await?;
            let n = loaded.iter().map(|w| w.related.len()).sum();
            black_box(loaded);
            session.close().await?;
            n
        }
        1 => {
            let parents = sea_parent::Entity::find().all(&s.sea).await?;
            let children = parents.load_many(sea_child::Entity, &s.sea).await?;
            let n = children.iter().map(Vec::len).sum();
            black_box((parents, children));
            n
        }
        _ => {
            let rows = s
                .raw
                .query(
                    "SELECT p.id, p.name, c.id, c.parent_id, c.name, c.age FROM bench_parent p \
                     LEFT JOIN bench_child c ON c.parent_id = p.id ORDER BY p.id",
                    &[],
                )
                .await?;
            let mut out: Vec<(Parent, Vec<Child>)> = Vec::new();
            for row in &rows {
                let id: i64 = row.get(0);
                if out.last().is_none_or(|(p, _)| p.id != id) {
                    out.push((
                        Parent {
                            id,
                            name: row.get(1),
                        },
                        Vec::new(),
                    ));
                }
                if let (Some(child_id), Some((_, children))) =
                    (row.get::<_, Option<i64>>(2), out.last_mut())
                {
                    children.push(Child {
                        id: child_id,
                        parent_id: row.get(3),
                        name: row.get(4),
                        age: row.get(5),
                    });
                }
            }
            let n = out.iter().map(|(_, c)| c.len()).sum();
            black_box(out);
            n
        }
    };
    Ok((t.elapsed().as_secs_f64() * 1e3, n))
}

/// One round: every system's trials, shuffled; the median trial of each.
pub(crate) async fn round(s: &Systems, r: &mut Results) -> Res<()> {
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(TRIALS); SYSTEMS.len()];
    let mut order: Vec<usize> = (0..SYSTEMS.len()).collect();
    let mut seed = SEED ^ 11;
    for _ in 0..TRIALS {
        shuffle(&mut order, &mut seed);
        for &i in &order {
            let (ms, n) = trial(s, i).await?;
            if n as i64 != PARENTS * CHILDREN_EACH {
                return Err(format!("{} loaded {n} children", SYSTEMS[i]).into());
            }
            times[i].push(ms);
        }
    }
    for (system, mut v) in SYSTEMS.into_iter().zip(times) {
        v.sort_by(f64::total_cmp);
        r.add(W, "ms", system, v[v.len() / 2]);
    }
    Ok(())
}

/// The workload's ratios, for the report.
pub(crate) fn ratios(r: &Results) -> Vec<(String, f64, &'static str)> {
    let get = |system: &str| r.get(W, "ms", system);
    vec![
        (
            "eager load 1,000 × 10: speed vs SeaORM's loader".into(),
            get(SYSTEMS[1]) / get(SYSTEMS[0]),
            "≥ 1.0×",
        ),
        (
            "eager load 1,000 × 10: time vs raw join + grouping (lower is better)".into(),
            get(SYSTEMS[0]) / get(SYSTEMS[2]),
            "≤ 1.3×",
        ),
    ]
}

/// Workload 12: `copy_in` of 100,000 rows against raw tokio-postgres's COPY BINARY, both into an
/// empty table, trials interleaved.
pub(crate) async fn copy_round(s: &Systems, r: &mut Results) -> Res<()> {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::Type;
    const W12: &str = "12. COPY 100,000 rows in";
    const ROWS: usize = 100_000;
    let systems = ["actor-orm copy_in", "raw: COPY BINARY"];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); systems.len()];
    let mut order: Vec<usize> = (0..systems.len()).collect();
    let mut seed = SEED ^ 12;
    for _ in 0..3 {
        shuffle(&mut order, &mut seed);
        for &i in &order {
            s.raw.batch_execute("TRUNCATE bench_writes").await?;
            let rows = crate::new_rows(ROWS);
            let t = Instant::now();
            if i == 0 {
                let session = s.orm.session().await?;
                session.copy_in(rows).await?;
                session.commit().await?;
                times[i].push(t.elapsed().as_secs_f64() * 1e3);
                session.close().await?;
            } else {
                let sink = s
                    .raw
                    .copy_in("COPY bench_writes (name, email, age) FROM STDIN BINARY")
                    .await?;
                let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TEXT, Type::INT4]);
                let mut writer = std::pin::pin!(writer);
                for row in rows {
                    writer
                        .as_mut()
                        .write(&[&row.name, &row.email, &row.age])
                        .await?;
                }
                writer.finish().await?;
                times[i].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    for (system, mut v) in systems.into_iter().zip(times) {
        v.sort_by(f64::total_cmp);
        r.add(W12, "ms", system, v[v.len() / 2]);
    }
    Ok(())
}

/// Workload 12's ratio.
pub(crate) fn copy_ratio(r: &Results) -> (String, f64, &'static str) {
    let w = "12. COPY 100,000 rows in";
    (
        "copy_in 100,000: time vs raw COPY BINARY (lower is better)".into(),
        r.get(w, "ms", "actor-orm copy_in") / r.get(w, "ms", "raw: COPY BINARY"),
        "≤ 1.2×",
    )
}
