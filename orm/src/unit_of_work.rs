//! The unit of work: pending inserts, updates and deletes, and the statements a flush sends.

use std::collections::{HashMap, HashSet};

use sea_query::{Expr, ExprTrait, PostgresQueryBuilder, Query, Value, Values};
use tokio_postgres::Row;

use crate::error::{Error, Result};
use crate::identity::IdentityMap;
use crate::model::{Key, Model, ModelMeta};

/// A model with its type erased, as the unit of work holds it.
pub(crate) trait Pending: Send + Sync {
    fn meta(&self) -> &'static ModelMeta;
    fn values(&self) -> Result<Vec<Value>>;
    fn is_unset(&self, index: usize) -> bool;
    /// Decodes a returned row as this model's type and records it in the identity map.
    fn remember(&self, row: &Row, identity: &mut IdentityMap) -> Result<()>;
}

impl<M: Model> Pending for M {
    fn meta(&self) -> &'static ModelMeta {
        M::meta()
    }
    fn values(&self) -> Result<Vec<Value>> {
        Model::values(self)
    }
    fn is_unset(&self, index: usize) -> bool {
        Model::is_unset(self, index)
    }
    fn remember(&self, row: &Row, identity: &mut IdentityMap) -> Result<()> {
        let positions = crate::model::in_order(M::meta().columns.len());
        let stored = M::from_row(row, &positions)?;
        identity.insert(stored.key()?, stored);
        Ok(())
    }
}

/// One pending change.
pub(crate) enum Op {
    /// Insert the model; with `returning`, read the stored row back into the identity map.
    Insert {
        model: Box<dyn Pending>,
        returning: bool,
    },
    /// Write `columns` of the model; `expected_version` is the version loaded, and `checked`
    /// the loaded values of the columns that must still hold them (the dirty-column check).
    Update {
        model: Box<dyn Pending>,
        key: Key,
        columns: Vec<usize>,
        expected_version: Option<i64>,
        checked: Vec<(usize, Value)>,
    },
    Delete {
        meta: &'static ModelMeta,
        key: Key,
        key_values: Vec<Value>,
        expected_version: Option<i64>,
    },
    /// A deferred `UPDATE … WHERE` or `DELETE … WHERE` of `meta`'s table: run where it was
    /// queued among the other changes, its row count not read.
    Statement {
        meta: &'static ModelMeta,
        sql: String,
        values: Values,
    },
}

impl Op {
    fn meta(&self) -> &'static ModelMeta {
        match self {
            Op::Insert { model: m, .. } | Op::Update { model: m, .. } => m.meta(),
            Op::Delete { meta, .. } | Op::Statement { meta, .. } => meta,
        }
    }
}

/// Pending changes of a session, in the order the caller made them.
#[derive(Default)]
pub struct UnitOfWork {
    pub(crate) ops: Vec<Op>,
}

impl std::fmt::Debug for UnitOfWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitOfWork")
            .field("pending", &self.ops.len())
            .finish()
    }
}

impl UnitOfWork {
    /// How many changes are pending.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// Whether every pending change is an INSERT or a deferred statement: nothing whose outcome
    /// the client must check before committing.
    pub(crate) fn only_unchecked(&self) -> bool {
        self.ops
            .iter()
            .all(|o| matches!(o, Op::Insert { .. } | Op::Statement { .. }))
    }
    /// Drops every pending change.
    pub fn clear(&mut self) {
        self.ops.clear();
    }
    pub(crate) fn truncate(&mut self, len: usize) {
        self.ops.truncate(len);
    }

    /// Queues an UPDATE; a pending update of the same row is replaced by the merged one (the
    /// columns of both, checked against what was loaded first).
    pub(crate) fn push_update(&mut self, op: Op) {
        if let Op::Update {
            model,
            key,
            mut columns,
            expected_version,
            mut checked,
        } = op
        {
            let meta = model.meta();
            let mut expected = expected_version;
            if let Some(pos) = self.ops.iter().position(
                |o| matches!(o, Op::Update { model: m, key: k, .. } if std::ptr::eq(m.meta(), meta) && *k == key),
            ) && let Op::Update { columns: old, expected_version: old_v, checked: old_checked, .. } = self.ops.remove(pos)
            {
                for c in old {
                    if !columns.contains(&c) {
                        columns.push(c);
                    }
                }
                for (c, v) in old_checked {
                    match checked.iter_mut().find(|(i, _)| *i == c) {
                        Some(slot) => slot.1 = v,
                        None => checked.push((c, v)),
                    }
                }
                expected = old_v.or(expected);
            }
            columns.sort_unstable();
            checked.sort_unstable_by_key(|(i, _)| *i);
            self.ops.push(Op::Update {
                model,
                key,
                columns,
                expected_version: expected,
                checked,
            });
        }
    }

    /// The pending changes in the order a flush runs them: deferred statements stay where they
    /// were queued, and the changes between two of them are [`ordered`](Self::ordered).
    pub(crate) fn take_ordered(&mut self) -> Vec<Op> {
        let ops = std::mem::take(&mut self.ops);
        if !ops.iter().any(|o| matches!(o, Op::Statement { .. })) {
            return Self::ordered(ops);
        }
        let mut out = Vec::with_capacity(ops.len());
        let mut segment = Vec::new();
        for op in ops {
            if matches!(op, Op::Statement { .. }) {
                out.extend(Self::ordered(std::mem::take(&mut segment)));
                out.push(op);
            } else {
                segment.push(op);
            }
        }
        out.extend(Self::ordered(segment));
        out
    }

    /// Orders changes so foreign keys hold: inserts parents first, then updates, then deletes
    /// children first; within one table the caller's order is kept.
    fn ordered(ops: Vec<Op>) -> Vec<Op> {
        if ops.len() < 2 {
            return ops;
        }
        let metas: Vec<&'static ModelMeta> = {
            let mut seen = HashSet::new();
            ops.iter()
                .map(Op::meta)
                .filter(|m| seen.insert(m.identity()))
                .collect()
        };
        let rank = dependency_rank(&metas);
        let rank_of = |m: &ModelMeta| rank.get(&m.identity()).copied().unwrap_or(0);
        let (mut inserts, mut updates, mut deletes) = (Vec::new(), Vec::new(), Vec::new());
        for op in ops {
            match op {
                Op::Insert { .. } => inserts.push(op),
                Op::Update { .. } => updates.push(op),
                // A deferred statement never reaches here: it splits the changes into runs.
                Op::Delete { .. } | Op::Statement { .. } => deletes.push(op),
            }
        }
        // Stable sorts keep the caller's order within one rank.
        inserts.sort_by_key(|o| rank_of(o.meta()));
        deletes.sort_by_key(|o| std::cmp::Reverse(rank_of(o.meta())));
        inserts.into_iter().chain(updates).chain(deletes).collect()
    }
}

/// Depth of each table in the foreign-key graph among `metas`: a table referencing another comes
/// after it. A cycle is broken arbitrarily (the database will say if it matters).
fn dependency_rank(metas: &[&'static ModelMeta]) -> HashMap<(&'static str, &'static str), usize> {
    fn depth(
        meta: &'static ModelMeta,
        present: &HashSet<(&'static str, &'static str)>,
        memo: &mut HashMap<(&'static str, &'static str), usize>,
        visiting: &mut HashSet<(&'static str, &'static str)>,
    ) -> usize {
        if let Some(d) = memo.get(&meta.identity()) {
            return *d;
        }
        if !visiting.insert(meta.identity()) {
            return 0;
        }
        let d = meta
            .columns
            .iter()
            .filter_map(|c| c.references.map(|r| r()))
            .filter(|parent| parent.identity() != meta.identity())
            .map(|parent| {
                if present.contains(&parent.identity()) {
                    depth(parent, present, memo, visiting) + 1
                } else {
                    0
                }
            })
            .max()
            .unwrap_or(0);
        visiting.remove(&meta.identity());
        memo.insert(meta.identity(), d);
        d
    }
    let present: HashSet<_> = metas.iter().map(|m| m.identity()).collect();
    let mut memo = HashMap::new();
    for m in metas {
        depth(m, &present, &mut memo, &mut HashSet::new());
    }
    memo
}

/// The column list every statement returns: all of the model's columns, in order.
fn returning_all(meta: &ModelMeta) -> sea_query::ReturningClause {
    Query::returning().exprs(meta.returning_exprs())
}

/// Where-clause on the key (and version).
fn key_condition(meta: &ModelMeta, key_values: &[Value], version: Option<i64>) -> Expr {
    let key = meta
        .key_columns()
        .zip(key_values)
        .map(|((_, col), v)| Expr::col(col.name).eq(v.clone()));
    let version = match (meta.version_column(), version) {
        (Some((_, col)), Some(v)) => Some(Expr::col(col.name).eq(coerce_version(col.sql_type, v))),
        _ => None,
    };
    key.chain(version)
        .reduce(ExprTrait::and)
        .unwrap_or_else(|| Expr::cust("FALSE"))
}

/// `column IS NOT DISTINCT FROM $loaded` for each checked column: NULL-safe, so a column loaded
/// as NULL must still be NULL.
fn unchanged_condition(meta: &ModelMeta, checked: &[(usize, Value)]) -> Result<Option<Expr>> {
    let mut each = Vec::with_capacity(checked.len());
    for (i, v) in checked {
        let col = &meta.columns[*i];
        let loaded = col.sql_type.coerce(v.clone(), col.name)?;
        each.push(Expr::cust_with_exprs(
            "$1 IS NOT DISTINCT FROM $2",
            [Expr::col(col.name), Expr::val(loaded)],
        ));
    }
    Ok(each.into_iter().reduce(ExprTrait::and))
}

pub(crate) fn coerce_version(ty: crate::SqlType, v: i64) -> Value {
    match ty {
        crate::SqlType::SmallInt => Value::SmallInt(i16::try_from(v).ok()),
        crate::SqlType::Integer => Value::Int(i32::try_from(v).ok()),
        _ => Value::BigInt(Some(v)),
    }
}

/// Reads a version column value as i64.
pub(crate) fn version_of(v: &Value) -> Option<i64> {
    match v {
        Value::SmallInt(Some(i)) => Some((*i).into()),
        Value::Int(Some(i)) => Some((*i).into()),
        Value::BigInt(Some(i)) => Some(*i),
        _ => None,
    }
}

/// A built statement: SQL, values, and the column each value is written to (for messages).
pub(crate) struct Built {
    pub(crate) sql: String,
    pub(crate) values: Values,
    pub(crate) columns: Vec<&'static str>,
}

/// Largest number of bound parameters in one statement (the protocol allows 65535).
const MAX_PARAMS: usize = 32_000;

/// Multi-row INSERT … RETURNING for models of one table that leave the same columns unset.
pub(crate) fn build_insert(
    meta: &'static ModelMeta,
    rows: &[&dyn Pending],
    on_conflict: Option<crate::query::OnConflict>,
    returning: bool,
) -> Result<Built> {
    let first = rows
        .first()
        .ok_or_else(|| Error::InvalidInput("nothing to insert".into()))?;
    let included = included_columns(meta, *first);
    let mut stmt = Query::insert();
    stmt.into_table(meta.table_ref())
        .columns(included.iter().map(|i| meta.columns[*i].name));
    let mut columns = Vec::with_capacity(rows.len() * included.len());
    for row in rows {
        let values = row.values()?;
        let mut out = Vec::with_capacity(included.len());
        for &i in &included {
            let col = &meta.columns[i];
            out.push(Expr::val(col.sql_type.coerce(values[i].clone(), col.name)?));
            columns.push(col.name);
        }
        stmt.values(out)
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
    }
    if let Some(mode) = on_conflict {
        let keys: Vec<&str> = meta.key_columns().map(|(_, c)| c.name).collect();
        let mut oc = sea_query::OnConflict::columns(keys);
        match mode {
            crate::query::OnConflict::DoNothing => {
                oc.do_nothing();
            }
            crate::query::OnConflict::UpdateAll => {
                let updatable: Vec<&str> = included
                    .iter()
                    .map(|i| &meta.columns[*i])
                    .filter(|c| !c.primary_key && !c.version && !c.generated)
                    .map(|c| c.name)
                    .collect();
                if updatable.is_empty() {
                    oc.do_nothing();
                } else {
                    oc.update_columns(updatable);
                    // The version is the database's: an overwrite bumps it, as an UPDATE does.
                    if let Some((i, col)) = meta.version_column() {
                        oc.values([(col.name, meta.column_expr(i).add(1))]);
                    }
                }
            }
        }
        stmt.on_conflict(oc);
    }
    if returning {
        stmt.returning(returning_all(meta));
    }
    let (sql, values) = stmt.build(PostgresQueryBuilder);
    Ok(Built {
        sql,
        values,
        columns,
    })
}

/// The columns an INSERT of `row` writes: all but those it leaves to the database.
pub(crate) fn included_columns(meta: &ModelMeta, row: &dyn Pending) -> Vec<usize> {
    (0..meta.columns.len())
        .filter(|i| !row.is_unset(*i))
        .collect()
}

fn column_list(meta: &ModelMeta, included: &[usize]) -> String {
    included
        .iter()
        .map(|&i| crate::quote_ident(meta.columns[i].name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `$1::schema.type[], $2::…[]`: one array parameter per column, cast to the column's type as
/// the server reported it.
pub(crate) fn unnest_casts(types: &[tokio_postgres::types::Type]) -> Vec<String> {
    types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            format!(
                "${}::{}.{}[]",
                i + 1,
                crate::quote_ident(t.schema()),
                crate::quote_ident(t.name())
            )
        })
        .collect()
}

/// One array parameter per column, from each column's values.
pub(crate) fn arrays(by_column: Vec<Vec<Value>>) -> Values {
    Values(
        by_column
            .into_iter()
            .map(|items| Value::Array(sea_query::ArrayType::String, Some(Box::new(items))))
            .collect(),
    )
}

/// `INSERT INTO t (a, b) VALUES ($1, $2)`: prepared (never run) to learn the columns' types.
pub(crate) fn insert_probe(meta: &ModelMeta, included: &[usize]) -> String {
    let params: Vec<String> = (1..=included.len()).map(|n| format!("${n}")).collect();
    format!(
        "INSERT INTO {} ({}) VALUES ({})",
        meta.qualified_name(),
        column_list(meta, included),
        params.join(", ")
    )
}

/// Many rows as one statement with one parameter per column:
/// `INSERT INTO t (a, b) SELECT * FROM unnest($1::<a's type>[], $2::<b's type>[]) RETURNING …`.
/// Its text is the same whatever the number of rows (one prepared statement serves every
/// batch), and the server parses three arrays instead of thousands of parameters. `types` are
/// the columns' types as the server reported them (no column may itself be an array).
pub(crate) fn build_insert_unnest(
    meta: &'static ModelMeta,
    rows: &[&dyn Pending],
    included: &[usize],
    types: &[tokio_postgres::types::Type],
    returning: bool,
) -> Result<Built> {
    let casts = unnest_casts(types);
    let mut sql = format!(
        "INSERT INTO {} ({}) SELECT * FROM unnest({})",
        meta.qualified_name(),
        column_list(meta, included),
        casts.join(", "),
    );
    if returning {
        let all: Vec<String> = meta
            .columns
            .iter()
            .map(|c| crate::quote_ident(c.name))
            .collect();
        sql.push_str(" RETURNING ");
        sql.push_str(&all.join(", "));
    }
    let mut by_column: Vec<Vec<Value>> = included
        .iter()
        .map(|_| Vec::with_capacity(rows.len()))
        .collect();
    for row in rows {
        let mut values = row.values()?;
        for (slot, &i) in by_column.iter_mut().zip(included) {
            let col = &meta.columns[i];
            let v = std::mem::replace(&mut values[i], Value::Bool(None));
            slot.push(col.sql_type.coerce(v, col.name)?);
        }
    }
    Ok(Built {
        sql,
        values: arrays(by_column),
        columns: included.iter().map(|&i| meta.columns[i].name).collect(),
    })
}

/// The key column the database generates from a sequence (an identity or serial key), if the
/// model has exactly one key column and it is one.
pub(crate) fn generated_key(meta: &ModelMeta) -> Option<usize> {
    let mut keys = meta.key_columns();
    match (keys.next(), keys.next()) {
        (Some((i, col)), None) if col.auto_increment => Some(i),
        _ => None,
    }
}

/// A batch whose key the database generates, numbered so that each returned row names its
/// input: keys are drawn from the key's sequence beside each input row's ordinal, inserted, and
/// joined back.
///
/// `WITH input AS (SELECT u.*, nextval(pg_get_serial_sequence($t, $c)) AS "__key" FROM
/// unnest(…) WITH ORDINALITY AS u(…, "__n")), ins AS (INSERT … OVERRIDING SYSTEM VALUE SELECT
/// "__key", … FROM input ORDER BY "__n" RETURNING …) SELECT input."__n", ins.* FROM ins JOIN
/// input ON ins.key = input."__key"`.
pub(crate) fn build_insert_numbered(
    meta: &'static ModelMeta,
    rows: &[&dyn Pending],
    included: &[usize],
    types: &[tokio_postgres::types::Type],
) -> Result<Built> {
    let key = generated_key(meta)
        .ok_or_else(|| Error::InvalidInput("no generated key to number the rows by".into()))?;
    let plain = build_insert_unnest(meta, rows, included, types, false)?;
    let n = included.len();
    let casts = unnest_casts(types);
    let names = column_list(meta, included);
    let key_name = crate::quote_ident(meta.columns[key].name);
    let returning: Vec<String> = meta
        .columns
        .iter()
        .map(|c| match c.sql_type.read_as() {
            Some(t) => format!("CAST({} AS {t})", crate::quote_ident(c.name)),
            None => crate::quote_ident(c.name),
        })
        .collect();
    let sql = format!(
        "WITH input AS (SELECT u.*, nextval(pg_get_serial_sequence(${t}, ${c})) AS \"__key\" \
         FROM unnest({arrays}) WITH ORDINALITY AS u({names}, \"__n\")), \
         ins AS (INSERT INTO {table} ({key_name}, {names}) OVERRIDING SYSTEM VALUE \
         SELECT \"__key\", {names} FROM input ORDER BY \"__n\" RETURNING {returning}) \
         SELECT input.\"__n\", ins.* FROM ins JOIN input ON ins.{key_name} = input.\"__key\"",
        t = n + 1,
        c = n + 2,
        arrays = casts.join(", "),
        table = meta.qualified_name(),
        returning = returning.join(", "),
    );
    let mut values = plain.values;
    values.0.push(Value::String(Some(meta.qualified_name())));
    values
        .0
        .push(Value::String(Some(meta.columns[key].name.to_owned())));
    let mut columns = plain.columns;
    columns.push("(the table)");
    columns.push("(the key column)");
    Ok(Built {
        sql,
        values,
        columns,
    })
}

/// Whether `next` can join `batch` in one multi-row INSERT: same table, same columns left to
/// the database, and within the parameter limit.
pub(crate) fn same_batch(batch: &[&dyn Pending], next: &dyn Pending) -> bool {
    let Some(first) = batch.first() else {
        return true;
    };
    let meta = next.meta();
    std::ptr::eq(first.meta(), meta)
        && (0..meta.columns.len()).all(|i| first.is_unset(i) == next.is_unset(i))
        && (batch.len() + 1) * meta.columns.len().max(1) <= MAX_PARAMS
}

/// Whether an UPDATE writes this column's value (the key identifies the row, the version is
/// incremented by the server, a generated column is computed by it).
pub(crate) fn set_by_update(col: &crate::ColumnMeta) -> bool {
    !(col.primary_key || col.version || col.generated)
}

/// UPDATE … SET changed columns [, version = version + 1] WHERE key [AND version]
/// [AND each checked column IS NOT DISTINCT FROM its loaded value] RETURNING *.
pub(crate) fn build_update(
    meta: &'static ModelMeta,
    values: &[Value],
    key_values: &[Value],
    columns: &[usize],
    expected_version: Option<i64>,
    checked: &[(usize, Value)],
) -> Result<Built> {
    let mut stmt = Query::update();
    stmt.table(meta.table_ref());
    let mut names = Vec::new();
    for &i in columns {
        let col = &meta.columns[i];
        if !set_by_update(col) {
            continue;
        }
        stmt.value(col.name, col.sql_type.coerce(values[i].clone(), col.name)?);
        names.push(col.name);
    }
    if let Some((_, col)) = meta.version_column() {
        // `version + $n`: the 1 is a bound value too.
        stmt.value(col.name, Expr::col(col.name).add(1));
        names.push(col.name);
    }
    stmt.and_where(key_condition(meta, key_values, expected_version));
    if let Some(unchanged) = unchanged_condition(meta, checked)? {
        stmt.and_where(unchanged);
    }
    stmt.returning(returning_all(meta));
    let (sql, values) = stmt.build(PostgresQueryBuilder);
    // Values in order: the SET list, the key, the version, then the checked columns.
    names.extend(meta.key_columns().map(|(_, c)| c.name));
    if let (Some((_, col)), Some(_)) = (meta.version_column(), expected_version) {
        names.push(col.name);
    }
    names.extend(checked.iter().map(|(i, _)| meta.columns[*i].name));
    Ok(Built {
        sql,
        values,
        columns: names,
    })
}

/// DELETE … WHERE key [AND version].
pub(crate) fn build_delete(
    meta: &'static ModelMeta,
    key_values: &[Value],
    expected_version: Option<i64>,
) -> Built {
    let mut stmt = Query::delete();
    stmt.from_table(meta.table_ref())
        .and_where(key_condition(meta, key_values, expected_version));
    let (sql, values) = stmt.build(PostgresQueryBuilder);
    Built {
        sql,
        values,
        columns: Vec::new(),
    }
}
