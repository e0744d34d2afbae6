//! Relations and eager loading: typed relation handles ([`BelongsTo`], [`HasMany`], [`HasOne`],
//! [`ManyToMany`]) that `#[derive(Model)]` writes from `references = …` and `has_many(…)`-style
//! declarations, and [`Loader`]s that load a relation for a whole result in **one statement per
//! relation**, whatever the number of parents: the parents' keys go as one array parameter
//! (`fk = ANY($1)`), so one prepared statement serves every size.
//!
//! Loaded rows enter the identity map like any other, and a to-one relation whose rows are
//! already there costs no query. There is no lazy loading: what was not loaded is not there,
//! and loading a relation a model does not have does not compile.

use std::collections::HashMap;
use std::marker::PhantomData;

use sea_query::{ArrayType, Expr, ExprTrait, Value};

use crate::connection::Connection;
use crate::error::{Error, Result};
use crate::model::{Key, Model};
use crate::query::{Filter, Ordering, Select};
use crate::session::SessionState;

/// What a session does when it runs the same single-key read (a `get` that reaches the server)
/// more than a threshold of times: the shape of an N+1, which eager loading
/// ([`Loader`]) replaces with one statement per relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NPlusOne {
    /// Nothing.
    Off,
    /// One `tracing` warning per statement and session, past this many reads (the default, 20).
    Warn(u32),
    /// An [`Error::NPlusOne`] past this many reads: for tests that must not regress.
    Error(u32),
}

impl Default for NPlusOne {
    fn default() -> Self {
        NPlusOne::Warn(20)
    }
}

/// A boxed future borrowing the session, as loaders return.
pub type LoadFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A model with what was loaded for it.
#[derive(Debug, Clone, PartialEq)]
pub struct With<M, R> {
    /// The model.
    pub model: M,
    /// Its loaded relations: a `Vec` for a to-many relation, an `Option` for a to-one, a tuple
    /// for several.
    pub related: R,
}

impl<M: serde::Serialize, R: serde::Serialize> serde::Serialize for With<M, R> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("With", 2)?;
        st.serialize_field("model", &self.model)?;
        st.serialize_field("related", &self.related)?;
        st.end()
    }
}

/// A node of a tree loaded through a self-referential relation, with its children.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree<M> {
    /// The node.
    pub node: M,
    /// Its children, each a tree.
    pub children: Vec<Tree<M>>,
}

impl<M: serde::Serialize> serde::Serialize for Tree<M> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("Tree", 2)?;
        st.serialize_field("node", &self.node)?;
        st.serialize_field("children", &self.children)?;
        st.end()
    }
}

/// What a relation's query adds: filters, order, and a limit per parent.
#[derive(Debug, Clone, Default)]
pub struct Refine {
    filters: Vec<Filter>,
    order: Vec<Ordering>,
    limit_each: Option<u64>,
}

/// `P` has many `C`: `C`'s columns `fk` hold `P`'s key.
pub struct HasMany<P, C> {
    name: &'static str,
    fk: &'static [&'static str],
    refine: Option<Box<Refine>>,
    _m: PhantomData<fn() -> (P, C)>,
}

/// `P` has at most one `C`: `C`'s columns `fk` hold `P`'s key (a unique foreign key).
pub struct HasOne<P, C> {
    name: &'static str,
    fk: &'static [&'static str],
    _m: PhantomData<fn() -> (P, C)>,
}

/// `C` belongs to `P`: `C`'s columns `fk` hold `P`'s key.
pub struct BelongsTo<C, P> {
    name: &'static str,
    fk: &'static [&'static str],
    _m: PhantomData<fn() -> (C, P)>,
}

/// `P` and `C` linked through rows of the join model `J`: `J.from` holds `P`'s key, `J.to`
/// holds `C`'s.
pub struct ManyToMany<P, C, J> {
    name: &'static str,
    from: &'static str,
    to: &'static str,
    refine: Option<Box<Refine>>,
    _m: PhantomData<Marker<P, C, J>>,
}

/// The types a many-to-many relation is between, without owning any.
type Marker<P, C, J> = fn() -> (P, C, J);

macro_rules! relation_basics {
    ($t:ident < $($g:ident),+ >) => {
        impl<$($g),+> Clone for $t<$($g),+> {
            fn clone(&self) -> Self {
                self.copy()
            }
        }
        impl<$($g),+> std::fmt::Debug for $t<$($g),+> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}({})", stringify!($t), self.name)
            }
        }
    };
}
relation_basics!(HasMany<P, C>);
relation_basics!(HasOne<P, C>);
relation_basics!(BelongsTo<C, P>);
relation_basics!(ManyToMany<P, C, J>);

impl<P, C> HasMany<P, C> {
    /// The relation named `name`, through `C`'s columns `fk` (written by the derive).
    pub const fn new(name: &'static str, fk: &'static [&'static str]) -> Self {
        HasMany {
            name,
            fk,
            refine: None,
            _m: PhantomData,
        }
    }
    fn copy(&self) -> Self {
        HasMany {
            name: self.name,
            fk: self.fk,
            refine: self.refine.clone(),
            _m: PhantomData,
        }
    }
    fn refine(mut self, f: impl FnOnce(&mut Refine)) -> Self {
        f(self.refine.get_or_insert_with(Box::default));
        self
    }
    /// Only the related rows matching `filter`.
    pub fn filter(self, filter: Filter) -> Self {
        self.refine(|r| r.filters.push(filter))
    }
    /// The related rows of each parent in this order.
    pub fn order_by(self, order: Ordering) -> Self {
        self.refine(|r| r.order.push(order))
    }
    /// At most `n` related rows per parent (in the given order): still one statement.
    pub fn limit_each(self, n: u64) -> Self {
        self.refine(|r| r.limit_each = Some(n))
    }
    /// Loads `inner` for the related rows too: one more statement.
    pub fn with<L: Loader<C>>(self, inner: L) -> Nested<Self, L>
    where
        C: Model,
    {
        Nested { outer: self, inner }
    }
}

impl<P, C> HasOne<P, C> {
    /// The relation named `name`, through `C`'s columns `fk` (written by the derive).
    pub const fn new(name: &'static str, fk: &'static [&'static str]) -> Self {
        HasOne {
            name,
            fk,
            _m: PhantomData,
        }
    }
    fn copy(&self) -> Self {
        HasOne::new(self.name, self.fk)
    }
    /// Loads `inner` for the related row too.
    pub fn with<L: Loader<C>>(self, inner: L) -> Nested<Self, L>
    where
        C: Model,
    {
        Nested { outer: self, inner }
    }
}

impl<C, P> BelongsTo<C, P> {
    /// The relation named `name`, through `C`'s columns `fk` (written by the derive).
    pub const fn new(name: &'static str, fk: &'static [&'static str]) -> Self {
        BelongsTo {
            name,
            fk,
            _m: PhantomData,
        }
    }
    fn copy(&self) -> Self {
        BelongsTo::new(self.name, self.fk)
    }
    /// Loads `inner` for the related row too.
    pub fn with<L: Loader<P>>(self, inner: L) -> Nested<Self, L>
    where
        P: Model,
    {
        Nested { outer: self, inner }
    }
    /// `C`'s columns holding `P`'s key.
    pub fn foreign_key(&self) -> &'static [&'static str] {
        self.fk
    }
}

impl<P, C, J> ManyToMany<P, C, J> {
    /// The relation named `name`, through `J.from` (holding `P`'s key) and `J.to` (holding
    /// `C`'s), written by the derive.
    pub const fn new(name: &'static str, from: &'static str, to: &'static str) -> Self {
        ManyToMany {
            name,
            from,
            to,
            refine: None,
            _m: PhantomData,
        }
    }
    fn copy(&self) -> Self {
        ManyToMany {
            name: self.name,
            from: self.from,
            to: self.to,
            refine: self.refine.clone(),
            _m: PhantomData,
        }
    }
    /// Only the related rows matching `filter`.
    pub fn filter(mut self, filter: Filter) -> Self {
        self.refine
            .get_or_insert_with(Box::default)
            .filters
            .push(filter);
        self
    }
    /// The related rows of each parent in this order.
    pub fn order_by(mut self, order: Ordering) -> Self {
        self.refine
            .get_or_insert_with(Box::default)
            .order
            .push(order);
        self
    }
    /// Loads `inner` for the related rows too.
    pub fn with<L: Loader<C>>(self, inner: L) -> Nested<Self, L>
    where
        C: Model,
    {
        Nested { outer: self, inner }
    }
    /// `J`'s column holding `P`'s key, and the one holding `C`'s.
    pub fn link_columns(&self) -> (&'static str, &'static str) {
        (self.from, self.to)
    }
}

/// A relation and what to load for its rows in turn (`Category::FILMS.with(Film::ACTORS)`).
#[derive(Debug, Clone)]
pub struct Nested<R, L> {
    outer: R,
    inner: L,
}

/// Something loaded for every model of a result: a relation, a nested relation, or a tuple of
/// them. [`Session::load`](../actor_orm/struct.Session.html) takes one.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be loaded for `{P}`",
    label = "not a relation of `{P}`",
    note = "a relation is loaded for the model that declares it: `Film::ACTORS` for films, `Language::FILMS` for languages"
)]
pub trait Loader<P: Model>: Send + Sync + 'static {
    /// What each model gets: `Vec<C>`, `Option<P>`, a [`With`] of them, or a tuple.
    type Output: Send + 'static;
    /// Loads for `parents`, returning one output per parent, in order.
    fn load<'a>(
        &'a self,
        s: &'a mut SessionState,
        conn: &'a Connection,
        parents: &'a [P],
    ) -> LoadFuture<'a, Result<Vec<Self::Output>>>;
}

/// A relation from `P` to `Target`: the rows of each parent, grouped.
pub trait Relation<P: Model>: Send + Sync + 'static {
    /// The related model.
    type Target: Model;
    /// Whether each parent has at most one related row.
    const TO_ONE: bool;
    /// The related rows of each parent, in order (statements counted by the caller).
    fn fetch<'a>(
        &'a self,
        s: &'a mut SessionState,
        conn: &'a Connection,
        parents: &'a [P],
    ) -> LoadFuture<'a, Result<Vec<Vec<Self::Target>>>>;
}

/// The values of `columns` of a model, by name.
fn values_of<M: Model>(model: &M, columns: &[&str]) -> Result<Vec<Value>> {
    let meta = M::meta();
    let all = model.values()?;
    columns
        .iter()
        .map(|c| {
            meta.columns
                .iter()
                .position(|m| m.name == *c)
                .map(|i| all[i].clone())
                .ok_or_else(|| Error::InvalidInput(format!("{} has no column {c}", meta.table)))
        })
        .collect()
}

/// A model's one-column key (many-to-many links are by one-column keys).
fn single_key<M: Model>(model: &M) -> Result<Value> {
    let mut k = model.key_values()?;
    match (k.pop(), k.is_empty()) {
        (Some(v), true) => Ok(v),
        _ => Err(Error::InvalidInput(format!(
            "{} needs a one-column key to be linked",
            M::meta().table
        ))),
    }
}

fn is_null(v: &Value) -> bool {
    crate::bind::is_null(v)
}

/// sea-query's array element type for values like `v`.
fn array_type(v: &Value) -> ArrayType {
    match v {
        Value::Bool(_) => ArrayType::Bool,
        Value::SmallInt(_) => ArrayType::SmallInt,
        Value::Int(_) => ArrayType::Int,
        Value::BigInt(_) => ArrayType::BigInt,
        Value::Float(_) => ArrayType::Float,
        Value::Double(_) => ArrayType::Double,
        Value::Bytes(_) => ArrayType::Bytes,
        #[cfg(feature = "uuid")]
        Value::Uuid(_) => ArrayType::Uuid,
        #[cfg(feature = "decimal")]
        Value::Decimal(_) => ArrayType::Decimal,
        #[cfg(feature = "chrono")]
        Value::ChronoDate(_) => ArrayType::ChronoDate,
        _ => ArrayType::String,
    }
}

/// The SQL array type for values like `v`.
fn array_cast(v: &Value) -> &'static str {
    match v {
        Value::Bool(_) => "boolean[]",
        Value::SmallInt(_) => "smallint[]",
        Value::Int(_) => "integer[]",
        Value::BigInt(_) => "bigint[]",
        Value::Float(_) => "real[]",
        Value::Double(_) => "double precision[]",
        Value::Bytes(_) => "bytea[]",
        #[cfg(feature = "uuid")]
        Value::Uuid(_) => "uuid[]",
        #[cfg(feature = "decimal")]
        Value::Decimal(_) => "numeric[]",
        #[cfg(feature = "chrono")]
        Value::ChronoDate(_) => "date[]",
        _ => "text[]",
    }
}

/// `columns` matched against the distinct `keys`: `col = ANY($1)` for one column, and
/// `(a, b) IN (SELECT * FROM unnest($1, $2))` for several — one array parameter per column, so
/// the statement's text is the same for any number of keys.
fn any_of(columns: &[Expr], keys: &[Vec<Value>]) -> Expr {
    let arrays: Vec<Expr> = (0..columns.len())
        .map(|c| {
            let items: Vec<Value> = keys.iter().map(|k| k[c].clone()).collect();
            let ty = items.first().map(array_type).unwrap_or(ArrayType::String);
            Expr::val(Value::Array(ty, Some(Box::new(items))))
        })
        .collect();
    if let ([column], [array]) = (columns, arrays.as_slice()) {
        return Expr::cust_with_exprs("$1 = ANY($2)", [column.clone(), array.clone()]);
    }
    // unnest of several arrays needs their types spelled out.
    let placeholders: Vec<String> = (0..arrays.len())
        .map(|i| {
            let cast = keys.first().map(|k| array_cast(&k[i])).unwrap_or("text[]");
            format!("CAST(${} AS {cast})", i + 1)
        })
        .collect();
    let unnest = Expr::cust_with_exprs(
        format!("(SELECT * FROM unnest({}))", placeholders.join(", ")),
        arrays,
    );
    Expr::cust_with_exprs("$1 IN $2", [Expr::tuple(columns.iter().cloned()), unnest])
}

/// Distinct non-NULL keys, in first-seen order.
fn distinct(keys: impl IntoIterator<Item = Vec<Value>>) -> Vec<Vec<Value>> {
    let mut seen = std::collections::HashSet::new();
    keys.into_iter()
        .filter(|k| !k.iter().any(is_null))
        .filter(|k| seen.insert(Key::of(k)))
        .collect()
}

fn qualified<M: Model>(column: &str) -> Expr {
    let meta = M::meta();
    match meta.schema {
        Some(schema) => Expr::col((schema, meta.table, column.to_owned())),
        None => Expr::col((meta.table, column.to_owned())),
    }
}

/// The children of `parents` through `fk`, with `refine`: one statement.
async fn children_of<P: Model, C: Model>(
    s: &mut SessionState,
    conn: &Connection,
    parents: &[P],
    fk: &[&str],
    refine: Option<&Refine>,
) -> Result<Vec<Vec<C>>> {
    let parent_keys: Vec<Vec<Value>> = parents
        .iter()
        .map(Model::key_values)
        .collect::<Result<_>>()?;
    let wanted = distinct(parent_keys.iter().cloned());
    let mut grouped: Vec<Vec<C>> = (0..parents.len()).map(|_| Vec::new()).collect();
    if wanted.is_empty() {
        return Ok(grouped);
    }
    let fk_exprs: Vec<Expr> = fk.iter().map(|c| qualified::<C>(c)).collect();
    let mut select = Select::<C>::new().filter(Filter::typed(any_of(&fk_exprs, &wanted)));
    let refine = refine.cloned().unwrap_or_default();
    for f in refine.filters {
        select = select.filter(f);
    }
    let (sql, values) = match refine.limit_each {
        None => {
            for o in refine.order {
                select = select.order_by(o);
            }
            select.build()
        }
        Some(n) => {
            // row_number() per parent, in the relation's order: still one statement.
            let order: Vec<String> = refine.order.iter().map(Ordering::to_sql).collect();
            let partition: Vec<String> = fk.iter().map(|c| crate::quote_ident(c)).collect();
            let over = if order.is_empty() {
                format!("row_number() OVER (PARTITION BY {})", partition.join(", "))
            } else {
                format!(
                    "row_number() OVER (PARTITION BY {} ORDER BY {})",
                    partition.join(", "),
                    order.join(", ")
                )
            };
            select.stmt.expr(Expr::cust(over));
            let (inner, mut values) = select.build();
            // The limit is a bound value too.
            values
                .0
                .push(Value::BigInt(Some(i64::try_from(n).unwrap_or(i64::MAX))));
            let names: Vec<String> = C::meta()
                .columns
                .iter()
                .map(|c| crate::quote_ident(c.name))
                .collect();
            let sql = format!(
                "SELECT {cols} FROM ({inner}) AS ranked({cols}, \"__rank\") \
                 WHERE \"__rank\" <= ${limit} ORDER BY \"__rank\"",
                cols = names.join(", "),
                limit = values.0.len(),
            );
            (sql, values)
        }
    };
    let rows = s.rows(conn, &sql, values).await?;
    group_rows(s, &mut grouped, rows, &parent_keys, fk)?;
    Ok(grouped)
}

/// Decodes the children's rows (recording them in the identity map) and puts each under every
/// parent whose key its `fk` columns hold, read straight from the row.
fn group_rows<C: Model>(
    s: &mut SessionState,
    grouped: &mut [Vec<C>],
    rows: Vec<tokio_postgres::Row>,
    parent_keys: &[Vec<Value>],
    fk: &[&str],
) -> Result<()> {
    let meta = C::meta();
    let fk_at: Vec<usize> = fk
        .iter()
        .map(|c| {
            meta.columns
                .iter()
                .position(|m| m.name == *c)
                .ok_or_else(|| Error::InvalidInput(format!("{} has no column {c}", meta.table)))
        })
        .collect::<Result<_>>()?;
    let mut by_key: HashMap<Key, Vec<usize>> = HashMap::with_capacity(parent_keys.len());
    for (i, k) in parent_keys.iter().enumerate() {
        by_key.entry(Key::of(k)).or_default().push(i);
    }
    // Integer, text and uuid keys are read from the row; any other type from the model.
    let mut fks: Option<Vec<Key>> = Some(Vec::with_capacity(rows.len()));
    for row in &rows {
        let parts: Result<Vec<Value>> = fk_at
            .iter()
            .map(|&i| crate::types::decode_key_part(row, i))
            .collect();
        match (parts, fks.as_mut()) {
            (Ok(parts), Some(keys)) => keys.push(Key::new(parts)),
            _ => {
                fks = None;
                break;
            }
        }
    }
    let children: Vec<C> = s.remember_all(rows)?;
    let fks = match fks {
        Some(keys) => keys,
        None => children
            .iter()
            .map(|c| values_of(c, fk).map(Key::new))
            .collect::<Result<_>>()?,
    };
    for (child, key) in children.into_iter().zip(fks) {
        match by_key.get(&key).map(Vec::as_slice) {
            Some([only]) => grouped[*only].push(child),
            Some(many) => {
                for &p in many {
                    grouped[p].push(child.clone());
                }
            }
            None => {}
        }
    }
    Ok(())
}

impl<P: Model, C: Model> Relation<P> for HasMany<P, C> {
    type Target = C;
    const TO_ONE: bool = false;
    fn fetch<'a>(
        &'a self,
        s: &'a mut SessionState,
        conn: &'a Connection,
        parents: &'a [P],
    ) -> LoadFuture<'a, Result<Vec<Vec<C>>>> {
        Box::pin(children_of(
            s,
            conn,
            parents,
            self.fk,
            self.refine.as_deref(),
        ))
    }
}

impl<P: Model, C: Model> Relation<P> for HasOne<P, C> {
    type Target = C;
    const TO_ONE: bool = true;
    fn fetch<'a>(
        &'a self,
        s: &'a mut SessionState,
        conn: &'a Connection,
        parents: &'a [P],
    ) -> LoadFuture<'a, Result<Vec<Vec<C>>>> {
        Box::pin(children_of(s, conn, parents, self.fk, None))
    }
}

impl<C: Model, P: Model> Relation<C> for BelongsTo<C, P> {
    type Target = P;
    const TO_ONE: bool = true;
    fn fetch<'a>(
        &'a self,
        s: &'a mut SessionState,
        conn: &'a Connection,
        children: &'a [C],
    ) -> LoadFuture<'a, Result<Vec<Vec<P>>>> {
        Box::pin(async move {
            let fks: Vec<Vec<Value>> = children
                .iter()
                .map(|c| values_of(c, self.fk))
                .collect::<Result<_>>()?;
            // Parents already in the identity map cost nothing.
            let missing: Vec<Vec<Value>> = distinct(fks.iter().cloned())
                .into_iter()
                .filter(|k| !s.identity_mut().contains::<P>(&Key::of(k)))
                .collect();
            if !missing.is_empty() {
                let key_exprs: Vec<Expr> = P::meta()
                    .key_columns()
                    .map(|(_, c)| qualified::<P>(c.name))
                    .collect();
                let select = Select::<P>::new().filter(Filter::typed(any_of(&key_exprs, &missing)));
                let (sql, values) = select.build();
                s.load_rows::<P>(conn, &sql, values).await?;
            }
            Ok(fks
                .iter()
                .map(|k| {
                    if k.iter().any(is_null) {
                        Vec::new()
                    } else {
                        s.identity_mut().get::<P>(&Key::of(k)).into_iter().collect()
                    }
                })
                .collect())
        })
    }
}

impl<P: Model, C: Model, J: Model> Relation<P> for ManyToMany<P, C, J> {
    type Target = C;
    const TO_ONE: bool = false;
    fn fetch<'a>(
        &'a self,
        s: &'a mut SessionState,
        conn: &'a Connection,
        parents: &'a [P],
    ) -> LoadFuture<'a, Result<Vec<Vec<C>>>> {
        Box::pin(async move {
            let parent_keys: Vec<Vec<Value>> = parents
                .iter()
                .map(Model::key_values)
                .collect::<Result<_>>()?;
            let wanted = distinct(parent_keys.iter().cloned());
            let mut grouped: Vec<Vec<C>> = (0..parents.len()).map(|_| Vec::new()).collect();
            if wanted.is_empty() {
                return Ok(grouped);
            }
            let c_key = C::meta()
                .key_columns()
                .next()
                .map(|(_, c)| c.name)
                .ok_or_else(|| Error::InvalidInput("the related model has no key".into()))?;
            let mut select = Select::<C>::new();
            // The join model's column holding the parent's key comes first: it groups the rows.
            select.stmt.expr(qualified::<J>(self.from));
            select.stmt.inner_join(
                J::meta().table_ref(),
                qualified::<J>(self.to).eq(qualified::<C>(c_key)),
            );
            select = select.filter(Filter::typed(any_of(&[qualified::<J>(self.from)], &wanted)));
            if let Some(r) = self.refine.as_deref() {
                for f in &r.filters {
                    select = select.filter(f.clone());
                }
                for o in &r.order {
                    select = select.order_by(o.clone());
                }
            }
            let (sql, values) = select.build();
            let rows = s.rows(conn, &sql, values).await?;
            let n = C::meta().columns.len();
            let positions: Vec<usize> = (0..n).collect();
            let mut by_key: HashMap<Key, Vec<usize>> = HashMap::new();
            for (i, k) in parent_keys.iter().enumerate() {
                by_key.entry(Key::of(k)).or_default().push(i);
            }
            for row in &rows {
                let child = s.remember_row::<C>(row, &positions)?;
                let from = crate::types::decode_key_part(row, n)?;
                if let Some(ps) = by_key.get(&Key::one(from)) {
                    for &p in ps {
                        grouped[p].push(child.clone());
                    }
                }
            }
            Ok(grouped)
        })
    }
}

macro_rules! plain_loader {
    ($t:ident < $($g:ident),+ >, $p:ident) => {
        impl<$($g: Model),+> Loader<$p> for $t<$($g),+> {
            type Output = <Self as Shape<$p>>::Out;
            fn load<'a>(
                &'a self,
                s: &'a mut SessionState,
                conn: &'a Connection,
                parents: &'a [$p],
            ) -> LoadFuture<'a, Result<Vec<Self::Output>>> {
                Box::pin(async move {
                    let groups = self.fetch(s, conn, parents).await?;
                    Ok(groups.into_iter().map(<Self as Shape<$p>>::shape).collect())
                })
            }
        }
    };
}

/// How a relation's rows for one parent are handed back: a `Vec` or an `Option`.
pub trait Shape<P: Model>: Relation<P> {
    /// The output for one parent.
    type Out: Send + 'static;
    /// The output from the parent's rows.
    fn shape(rows: Vec<Self::Target>) -> Self::Out;
    /// The output of a nested load, from the parent's rows with their own outputs.
    type NestedOut<O: Send + 'static>: Send + 'static;
    /// Builds the nested output.
    fn shape_nested<O: Send + 'static>(rows: Vec<With<Self::Target, O>>) -> Self::NestedOut<O>;
}

macro_rules! to_many {
    ($t:ident < $($g:ident),+ >, $p:ident, $c:ident) => {
        impl<$($g: Model),+> Shape<$p> for $t<$($g),+> {
            type Out = Vec<$c>;
            fn shape(rows: Vec<$c>) -> Vec<$c> {
                rows
            }
            type NestedOut<O: Send + 'static> = Vec<With<$c, O>>;
            fn shape_nested<O: Send + 'static>(rows: Vec<With<$c, O>>) -> Vec<With<$c, O>> {
                rows
            }
        }
    };
}
macro_rules! to_one {
    ($t:ident < $($g:ident),+ >, $p:ident, $c:ident) => {
        impl<$($g: Model),+> Shape<$p> for $t<$($g),+> {
            type Out = Option<$c>;
            fn shape(rows: Vec<$c>) -> Option<$c> {
                rows.into_iter().next()
            }
            type NestedOut<O: Send + 'static> = Option<With<$c, O>>;
            fn shape_nested<O: Send + 'static>(rows: Vec<With<$c, O>>) -> Option<With<$c, O>> {
                rows.into_iter().next()
            }
        }
    };
}
to_many!(HasMany<P, C>, P, C);
to_many!(ManyToMany<P, C, J>, P, C);
to_one!(HasOne<P, C>, P, C);
to_one!(BelongsTo<C, P>, C, P);
plain_loader!(HasMany<P, C>, P);
plain_loader!(HasOne<P, C>, P);
plain_loader!(BelongsTo<C, P>, C);
plain_loader!(ManyToMany<P, C, J>, P);

impl<P: Model, R, L> Loader<P> for Nested<R, L>
where
    R: Shape<P>,
    L: Loader<R::Target>,
{
    type Output = R::NestedOut<L::Output>;
    fn load<'a>(
        &'a self,
        s: &'a mut SessionState,
        conn: &'a Connection,
        parents: &'a [P],
    ) -> LoadFuture<'a, Result<Vec<Self::Output>>> {
        Box::pin(async move {
            let groups = self.outer.fetch(s, conn, parents).await?;
            let sizes: Vec<usize> = groups.iter().map(Vec::len).collect();
            let flat: Vec<R::Target> = groups.into_iter().flatten().collect();
            let mut inner = self.inner.load(s, conn, &flat).await?.into_iter();
            let mut flat = flat.into_iter();
            let mut out = Vec::with_capacity(sizes.len());
            for n in sizes {
                let mut rows = Vec::with_capacity(n);
                for _ in 0..n {
                    match (flat.next(), inner.next()) {
                        (Some(model), Some(related)) => rows.push(With { model, related }),
                        _ => return Err(Error::InvalidInput("a nested load lost a row".into())),
                    }
                }
                out.push(R::shape_nested(rows));
            }
            Ok(out)
        })
    }
}

macro_rules! tuple_loader {
    ($($l:ident $v:ident $i:tt),+) => {
        impl<P: Model, $($l: Loader<P>),+> Loader<P> for ($($l,)+) {
            type Output = ($($l::Output,)+);
            fn load<'a>(
                &'a self,
                s: &'a mut SessionState,
                conn: &'a Connection,
                parents: &'a [P],
            ) -> LoadFuture<'a, Result<Vec<Self::Output>>> {
                Box::pin(async move {
                    $(let mut $v = self.$i.load(s, conn, parents).await?.into_iter();)+
                    let mut out = Vec::with_capacity(parents.len());
                    for _ in 0..parents.len() {
                        out.push(($(
                            $v.next().ok_or_else(|| Error::InvalidInput("a load lost a row".into()))?,
                        )+));
                    }
                    Ok(out)
                })
            }
        }
    };
}
tuple_loader!(A a 0, B b 1);
tuple_loader!(A a 0, B b 1, C c 2);
tuple_loader!(A a 0, B b 1, C c 2, D d 3);

/// A model with some of its columns' values replaced (a child's foreign key filled in from its
/// parent's generated key), as the unit of work inserts it.
struct Filled<'a, M> {
    model: &'a M,
    set: Vec<(usize, Value)>,
}

impl<M: Model> crate::unit_of_work::Pending for Filled<'_, M> {
    fn meta(&self) -> &'static crate::ModelMeta {
        M::meta()
    }
    fn values(&self) -> Result<Vec<Value>> {
        let mut values = self.model.values()?;
        for (i, v) in &self.set {
            values[*i] = v.clone();
        }
        Ok(values)
    }
    fn is_unset(&self, index: usize) -> bool {
        !self.set.iter().any(|(i, _)| *i == index) && self.model.is_unset(index)
    }
    fn remember(&self, row: &tokio_postgres::Row, identity: &mut crate::IdentityMap) -> Result<()> {
        crate::unit_of_work::Pending::remember(self.model, row, identity)
    }
}

impl SessionState {
    /// Inserts `parent` and its new `children` in one call: the parent first, then the children
    /// with their foreign key (`relation`'s columns) filled in from the parent's stored key —
    /// generated or given — in one statement per batch. Returns both as stored.
    pub async fn insert_with<P: Model + crate::Writable, C: Model + crate::Writable>(
        &mut self,
        conn: &Connection,
        parent: P,
        relation: &HasMany<P, C>,
        children: Vec<C>,
    ) -> Result<With<P, Vec<C>>> {
        let parent = self.insert(conn, parent).await?;
        let key = parent.key_values()?;
        let meta = C::meta();
        let columns: Vec<usize> = relation
            .fk
            .iter()
            .map(|c| {
                meta.columns
                    .iter()
                    .position(|m| m.name == *c)
                    .ok_or_else(|| Error::InvalidInput(format!("{} has no column {c}", meta.table)))
            })
            .collect::<Result<_>>()?;
        let filled: Vec<Filled<'_, C>> = children
            .iter()
            .map(|model| Filled {
                model,
                set: columns.iter().copied().zip(key.iter().cloned()).collect(),
            })
            .collect();
        let pending: Vec<&dyn crate::unit_of_work::Pending> = filled
            .iter()
            .map(|f| f as &dyn crate::unit_of_work::Pending)
            .collect();
        let related = self.insert_pending::<C>(conn, &pending).await?;
        Ok(With {
            model: parent,
            related,
        })
    }

    /// Links `parent` and `child` through the join model of `relation` (an INSERT of the two
    /// keys; the join model's other columns take their defaults).
    pub async fn link<P: Model, C: Model, J: Model + crate::Writable>(
        &mut self,
        conn: &Connection,
        relation: &ManyToMany<P, C, J>,
        parent: &P,
        child: &C,
    ) -> Result<()> {
        let (p, c) = (single_key(parent)?, single_key(child)?);
        let mut stmt = sea_query::Query::insert();
        stmt.into_table(J::meta().table_ref())
            .columns([relation.from, relation.to])
            .values([Expr::val(p), Expr::val(c)])
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        stmt.on_conflict(sea_query::OnConflict::new().do_nothing().to_owned());
        let (sql, values) = stmt.build(sea_query::PostgresQueryBuilder);
        self.execute_built(conn, &sql, values).await.map(drop)
    }

    /// Removes the link between `parent` and `child` (a DELETE of the join model's row);
    /// returns whether there was one.
    pub async fn unlink<P: Model, C: Model, J: Model + crate::Writable>(
        &mut self,
        conn: &Connection,
        relation: &ManyToMany<P, C, J>,
        parent: &P,
        child: &C,
    ) -> Result<bool> {
        let (p, c) = (single_key(parent)?, single_key(child)?);
        let mut stmt = sea_query::Query::delete();
        stmt.from_table(J::meta().table_ref())
            .and_where(Expr::col(relation.from).eq(p))
            .and_where(Expr::col(relation.to).eq(c));
        let (sql, values) = stmt.build(sea_query::PostgresQueryBuilder);
        Ok(self.execute_built(conn, &sql, values).await? > 0)
    }

    /// The models `select` returns, each with what `loader` loads for it: one statement for
    /// the models and one per relation (nested ones included), whatever the number of models.
    pub async fn load<M: Model, L: Loader<M>>(
        &mut self,
        conn: &Connection,
        select: Select<M>,
        loader: &L,
    ) -> Result<Vec<With<M, L::Output>>> {
        let models = self.all(conn, select).await?;
        let related = loader.load(self, conn, &models).await?;
        Ok(models
            .into_iter()
            .zip(related)
            .map(|(model, related)| With { model, related })
            .collect())
    }

    /// The models `select` returns, each with its to-one `relation` read in the same statement
    /// (a LEFT JOIN): the joined strategy, one statement in all. Both models enter the identity
    /// map.
    pub async fn load_joined<C: Model, P: Model>(
        &mut self,
        conn: &Connection,
        select: Select<C>,
        relation: &BelongsTo<C, P>,
    ) -> Result<Vec<With<C, Option<P>>>> {
        /// The joined table's alias: a self-referential relation joins a table to itself.
        const REL: &str = "__related";
        let p_meta = P::meta();
        let mut select = select;
        for c in p_meta.columns {
            let column = Expr::col((sea_query::Alias::new(REL), sea_query::Alias::new(c.name)));
            select.stmt.expr(crate::model::read_as(column, &c.sql_type));
        }
        let on = relation
            .fk
            .iter()
            .zip(p_meta.key_columns())
            .map(|(fk, (_, key))| {
                qualified::<C>(fk).eq(Expr::col((
                    sea_query::Alias::new(REL),
                    sea_query::Alias::new(key.name),
                )))
            })
            .reduce(ExprTrait::and)
            .ok_or_else(|| Error::InvalidInput(format!("{} has no key", p_meta.table)))?;
        select.stmt.join_as(
            sea_query::JoinType::LeftJoin,
            p_meta.table_ref(),
            sea_query::Alias::new(REL),
            on,
        );
        let (sql, values) = select.build();
        let rows = self.rows(conn, &sql, values).await?;
        let n = C::meta().columns.len();
        let c_at: Vec<usize> = (0..n).collect();
        let p_at: Vec<usize> = (n..n + p_meta.columns.len()).collect();
        let key_at = n + p_meta.key_columns().next().map_or(0, |(i, _)| i);
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let model = self.remember_row::<C>(row, &c_at)?;
            let missing = row
                .try_get::<_, crate::types::RawNull>(key_at)
                .is_ok_and(|n| n.0);
            let related = if missing {
                None
            } else {
                Some(self.remember_row::<P>(row, &p_at)?)
            };
            out.push(With { model, related });
        }
        Ok(out)
    }

    /// The models `roots` returns, each with its descendants through the self-referential
    /// relation `children` (a tree by `parent_id`): one statement per level.
    pub async fn load_tree<M: Model>(
        &mut self,
        conn: &Connection,
        roots: Select<M>,
        children: &HasMany<M, M>,
    ) -> Result<Vec<Tree<M>>> {
        /// Deeper than this, the rows form a cycle.
        const MAX_DEPTH: usize = 1000;
        let roots = self.all(conn, roots).await?;
        let mut levels: Vec<std::vec::IntoIter<Vec<M>>> = Vec::new();
        let mut current = roots.clone();
        while !current.is_empty() {
            if levels.len() == MAX_DEPTH {
                return Err(Error::InvalidInput(format!(
                    "the tree through {} is deeper than {MAX_DEPTH} levels: its rows form a cycle",
                    children.name
                )));
            }
            let groups = children.fetch(self, conn, &current).await?;
            current = groups.iter().flatten().cloned().collect();
            levels.push(groups.into_iter());
        }
        Ok(build_tree(roots, &mut levels))
    }
}

/// Assembles a tree from its levels: level `d` holds, in order, the children of every node of
/// depth `d`, and is consumed in the same order.
fn build_tree<M>(nodes: Vec<M>, levels: &mut [std::vec::IntoIter<Vec<M>>]) -> Vec<Tree<M>> {
    let Some((level, deeper)) = levels.split_first_mut() else {
        return nodes
            .into_iter()
            .map(|node| Tree {
                node,
                children: Vec::new(),
            })
            .collect();
    };
    nodes
        .into_iter()
        .map(|node| {
            let group = level.next().unwrap_or_default();
            Tree {
                node,
                children: build_tree(group, deeper),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_assembled_from_its_levels_in_order() {
        // Roots 1, 2; 1 has children 3, 4; 2 has 5; 4 has 6.
        let mut levels = vec![
            vec![vec![3, 4], vec![5]].into_iter(),
            vec![vec![], vec![6], vec![]].into_iter(),
            vec![vec![]].into_iter(),
        ];
        let tree = build_tree(vec![1, 2], &mut levels);
        let shape: Vec<(i32, Vec<(i32, usize)>)> = tree
            .iter()
            .map(|t| {
                (
                    t.node,
                    t.children
                        .iter()
                        .map(|c| (c.node, c.children.len()))
                        .collect(),
                )
            })
            .collect();
        assert_eq!(shape, vec![(1, vec![(3, 0), (4, 1)]), (2, vec![(5, 0)])]);
        assert_eq!(tree[0].children[1].children[0].node, 6);
    }
}
