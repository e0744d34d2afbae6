//! Many loaded rows' updates as one statement: one array parameter per column, joined to the
//! table by key, with the lost-update check (version and changed columns) per row.
//!
//! ```sql
//! UPDATE "t" AS "t" SET "c" = "v"."c", "version" = "t"."version" + 1
//! FROM unnest($1::int8[], $2::text[], $3::int4[], $4::text[]) WITH ORDINALITY
//!   AS "v"("id", "c", "__version", "__was_0", "__n")
//! WHERE "t"."id" = "v"."id" AND "t"."version" = "v"."__version"
//!   AND "t"."c" IS NOT DISTINCT FROM "v"."__was_0"
//! RETURNING "t"."id", "t"."c", "t"."version", "v"."__n"
//! ```
//!
//! A row whose check fails is simply not updated (PostgreSQL reports nothing): the ordinals
//! that come back say which rows were, and a missing one is [`Error::Stale`](crate::Error) for
//! that row — the flush fails, and the transaction is rolled back, before any COMMIT is sent.

use sea_query::Value;
use tokio_postgres::types::Type;

use crate::error::Result;
use crate::model::ModelMeta;
use crate::unit_of_work::{Built, Op};

/// Rows per statement at most (each column is one array parameter, whatever the count).
pub(crate) const MAX_ROWS: usize = 10_000;

/// What a batch of updates shares: the columns written, those checked, a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) set: Vec<usize>,
    pub(crate) checked: Vec<usize>,
    pub(crate) versioned: bool,
}

impl Shape {
    /// The shape of an update op, when it can join a batch: no generated column written or
    /// checked (a probe could not name it), and a key to join by.
    pub(crate) fn of(op: &Op) -> Option<(&'static ModelMeta, Shape)> {
        let Op::Update {
            model,
            columns,
            expected_version,
            checked,
            ..
        } = op
        else {
            return None;
        };
        let meta = model.meta();
        let set: Vec<usize> = columns
            .iter()
            .copied()
            .filter(|&i| crate::unit_of_work::set_by_update(&meta.columns[i]))
            .collect();
        let checked: Vec<usize> = checked.iter().map(|(i, _)| *i).collect();
        let generated = checked.iter().any(|&i| meta.columns[i].generated)
            || meta.key_columns().any(|(_, c)| c.generated);
        if set.is_empty() || generated || !meta.has_key() {
            return None;
        }
        let versioned = expected_version.is_some() && meta.version_column().is_some();
        Some((
            meta,
            Shape {
                set,
                checked,
                versioned,
            },
        ))
    }

    /// The columns whose types the statement's arrays take, in parameter order: keys, written,
    /// version, checked.
    pub(crate) fn parameter_columns(&self, meta: &ModelMeta) -> Vec<usize> {
        let mut cols: Vec<usize> = meta.key_columns().map(|(i, _)| i).collect();
        cols.extend(&self.set);
        if self.versioned
            && let Some((i, _)) = meta.version_column()
        {
            cols.push(i);
        }
        cols.extend(&self.checked);
        cols
    }
}

/// `INSERT INTO t (a, b) OVERRIDING SYSTEM VALUE VALUES ($1, $2)`, prepared (never run) to learn
/// the columns' types — identity columns included.
pub(crate) fn type_probe(meta: &ModelMeta, columns: &[usize]) -> String {
    let distinct = distinct(columns);
    let names: Vec<String> = distinct
        .iter()
        .map(|&i| crate::quote_ident(meta.columns[i].name))
        .collect();
    let params: Vec<String> = (1..=distinct.len()).map(|n| format!("${n}")).collect();
    format!(
        "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE VALUES ({})",
        meta.qualified_name(),
        names.join(", "),
        params.join(", ")
    )
}

/// `columns` without repeats, in order of first appearance (a written column is also checked).
fn distinct(columns: &[usize]) -> Vec<usize> {
    let mut distinct: Vec<usize> = Vec::with_capacity(columns.len());
    for &c in columns {
        if !distinct.contains(&c) {
            distinct.push(c);
        }
    }
    distinct
}

/// The type of each of `columns` (in order, repeats allowed), from the probe's answer for their
/// distinct list.
pub(crate) fn types_in_order(columns: &[usize], probe_types: &[Type]) -> Option<Vec<Type>> {
    let distinct = distinct(columns);
    columns
        .iter()
        .map(|c| {
            let at = distinct.iter().position(|d| d == c)?;
            probe_types.get(at).cloned()
        })
        .collect()
}

/// The statement for `ops` (updates of one shape of `meta`'s rows, distinct keys). `types` are
/// the [`Shape::parameter_columns`]' types as the server reported them (none an array).
pub(crate) fn build(
    meta: &'static ModelMeta,
    shape: &Shape,
    ops: &[&Op],
    types: &[Type],
) -> Result<Built> {
    let q = crate::quote_ident;
    let keys: Vec<usize> = meta.key_columns().map(|(i, _)| i).collect();
    // The unnest's column names: keys and written columns as themselves, then the version and
    // the checked values under names of their own.
    let mut names: Vec<String> = keys
        .iter()
        .chain(&shape.set)
        .map(|&i| q(meta.columns[i].name))
        .collect();
    if shape.versioned {
        names.push("\"__version\"".into());
    }
    names.extend((0..shape.checked.len()).map(|n| format!("\"__was_{n}\"")));
    let arrays = crate::unit_of_work::unnest_casts(types);
    let mut set: Vec<String> = shape
        .set
        .iter()
        .map(|&i| {
            let c = q(meta.columns[i].name);
            format!("{c} = \"v\".{c}")
        })
        .collect();
    let mut conditions: Vec<String> = keys
        .iter()
        .map(|&i| {
            let c = q(meta.columns[i].name);
            format!("\"t\".{c} = \"v\".{c}")
        })
        .collect();
    if let Some((_, col)) = meta.version_column() {
        let c = q(col.name);
        set.push(format!("{c} = \"t\".{c} + 1"));
        if shape.versioned {
            conditions.push(format!("\"t\".{c} = \"v\".\"__version\""));
        }
    }
    for (n, &i) in shape.checked.iter().enumerate() {
        conditions.push(format!(
            "\"t\".{} IS NOT DISTINCT FROM \"v\".\"__was_{n}\"",
            q(meta.columns[i].name)
        ));
    }
    let returning: Vec<String> = meta
        .columns
        .iter()
        .map(|c| match c.sql_type.read_as() {
            Some(t) => format!("CAST(\"t\".{} AS {t})", q(c.name)),
            None => format!("\"t\".{}", q(c.name)),
        })
        .collect();
    let sql = format!(
        "UPDATE {table} AS \"t\" SET {set} FROM unnest({arrays}) WITH ORDINALITY AS \"v\"({names}, \
         \"__n\") WHERE {conditions} RETURNING {returning}, \"v\".\"__n\"",
        table = meta.qualified_name(),
        set = set.join(", "),
        arrays = arrays.join(", "),
        names = names.join(", "),
        conditions = conditions.join(" AND "),
        returning = returning.join(", "),
    );
    let parameter_columns = shape.parameter_columns(meta);
    let mut by_column: Vec<Vec<Value>> = parameter_columns
        .iter()
        .map(|_| Vec::with_capacity(ops.len()))
        .collect();
    for op in ops {
        let Op::Update {
            model,
            expected_version,
            checked,
            ..
        } = op
        else {
            continue;
        };
        let mut values = model.values()?;
        let mut slot = by_column.iter_mut();
        for &i in keys.iter().chain(&shape.set) {
            let col = &meta.columns[i];
            let v = std::mem::replace(&mut values[i], Value::Bool(None));
            if let Some(s) = slot.next() {
                s.push(col.sql_type.coerce(v, col.name)?);
            }
        }
        if shape.versioned
            && let (Some((_, col)), Some(v), Some(s)) =
                (meta.version_column(), expected_version, slot.next())
        {
            s.push(crate::unit_of_work::coerce_version(col.sql_type, *v));
        }
        for (i, was) in checked {
            let col = &meta.columns[*i];
            if let Some(s) = slot.next() {
                s.push(col.sql_type.coerce(was.clone(), col.name)?);
            }
        }
    }
    Ok(Built {
        sql,
        values: crate::unit_of_work::arrays(by_column),
        columns: parameter_columns
            .iter()
            .map(|&i| meta.columns[i].name)
            .collect(),
    })
}
