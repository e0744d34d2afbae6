//! Typed queries over sea-query: filters, ordering, joins, projections and aggregates.

use std::marker::PhantomData;

use sea_query::{
    Expr, ExprTrait as _, Func, JoinType, PostgresQueryBuilder, Query, SelectStatement, Value,
    Values,
};
use tokio_postgres::Row;

use crate::error::{Error, Result};
use crate::expression::{IntoExpression, Node};
use crate::lock::Lock;
use crate::model::{Column, IntoKey, Model};
use crate::types::ColumnValue;

/// A boolean condition for WHERE, ON and HAVING; combine with [`and`](Filter::and),
/// [`or`](Filter::or) and [`not`](Filter::not).
#[derive(Debug, Clone)]
pub struct Filter {
    pub(crate) expr: Expr,
    /// Built from an expression the ORM did not write ([`Filter::from_expr`]): it may call
    /// functions with side effects, so a query using it runs inside the transaction.
    pub(crate) opaque: bool,
}

impl Filter {
    /// A condition the ORM built from typed columns and bound values: it only reads.
    pub(crate) fn typed(expr: Expr) -> Filter {
        Filter {
            expr,
            opaque: false,
        }
    }
    /// Both conditions.
    pub fn and(self, other: Filter) -> Filter {
        Filter {
            expr: self.expr.and(other.expr),
            opaque: self.opaque || other.opaque,
        }
    }
    /// Either condition.
    pub fn or(self, other: Filter) -> Filter {
        Filter {
            expr: self.expr.or(other.expr),
            opaque: self.opaque || other.opaque,
        }
    }
    /// The negation.
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Filter {
        Filter {
            expr: self.expr.not(),
            opaque: self.opaque,
        }
    }
    /// All of these conditions (TRUE when empty).
    pub fn all(filters: impl IntoIterator<Item = Filter>) -> Filter {
        filters
            .into_iter()
            .reduce(Filter::and)
            .unwrap_or(Filter::constant(true))
    }
    /// Any of these conditions (FALSE when empty).
    pub fn any(filters: impl IntoIterator<Item = Filter>) -> Filter {
        filters
            .into_iter()
            .reduce(Filter::or)
            .unwrap_or(Filter::constant(false))
    }
    /// TRUE or FALSE as SQL keywords (a bound boolean would leave its type to inference).
    pub(crate) fn constant(value: bool) -> Filter {
        Filter::typed(Expr::cust(if value { "TRUE" } else { "FALSE" }))
    }
    /// A condition from a sea-query expression, for what the typed columns do not cover. The ORM
    /// cannot tell what such an expression calls, so a query using it always runs inside the
    /// session's transaction (see [`Select::reads_only`]).
    pub fn from_expr(expr: Expr) -> Filter {
        Filter { expr, opaque: true }
    }
}

/// An ORDER BY term.
#[derive(Debug, Clone)]
pub struct Ordering {
    expr: Expr,
    order: sea_query::Order,
}

impl Ordering {
    pub(crate) fn new(expr: Expr, order: sea_query::Order) -> Self {
        Ordering { expr, order }
    }

    /// The term as SQL (`"film"."title" DESC`), for a window's ORDER BY. Orderings are built
    /// from columns: they hold no values.
    pub(crate) fn to_sql(&self) -> String {
        let mut q = Query::select();
        q.expr(Expr::cust("1"))
            .order_by_expr(self.expr.clone(), self.order.clone());
        let sql = q.to_string(sea_query::PostgresQueryBuilder);
        sql.split_once(" ORDER BY ")
            .map(|(_, o)| o.to_owned())
            .unwrap_or_default()
    }
}

/// A SELECT of whole models of type `M`. Start with `M::query()` (or [`Select::new`]).
#[derive(Debug, Clone)]
pub struct Select<M> {
    pub(crate) stmt: SelectStatement,
    opaque: bool,
    lock: Option<Lock>,
    _model: PhantomData<fn() -> M>,
}

impl<M: Model> Default for Select<M> {
    fn default() -> Self {
        Self::new()
    }
}

fn select_columns<M: Model>(stmt: &mut SelectStatement) {
    let meta = M::meta();
    for i in 0..meta.columns.len() {
        stmt.expr(meta.select_expr(i));
    }
}

impl<M: Model> Select<M> {
    /// Every row of `M`'s table.
    pub fn new() -> Self {
        let mut stmt = Query::select();
        select_columns::<M>(&mut stmt);
        stmt.from(M::meta().table_ref());
        Select {
            stmt,
            opaque: false,
            lock: None,
            _model: PhantomData,
        }
    }

    /// Keeps the rows matching `filter` (ANDed with earlier filters).
    pub fn filter(mut self, filter: Filter) -> Self {
        self.opaque |= filter.opaque;
        self.stmt.and_where(filter.expr);
        self
    }

    /// Whether the statement is built only from typed columns and bound values, so that running
    /// it cannot change anything: such a read may run outside the session's transaction while
    /// none is open. A filter from [`Filter::from_expr`] or a locking clause makes this `false`.
    pub fn reads_only(&self) -> bool {
        !self.opaque && self.lock.is_none()
    }

    /// Locks the rows read until the transaction ends (see [`Lock`]); replaces an earlier lock.
    /// The read opens the session's transaction, and refreshes the session's copy of each row.
    pub fn lock(mut self, lock: Lock) -> Self {
        lock.apply(&mut self.stmt);
        self.lock = Some(lock);
        self
    }

    /// `FOR UPDATE`: [`Lock::update`].
    pub fn for_update(self) -> Self {
        self.lock(Lock::update())
    }

    /// `FOR NO KEY UPDATE`: [`Lock::no_key_update`].
    pub fn for_no_key_update(self) -> Self {
        self.lock(Lock::no_key_update())
    }

    /// `FOR SHARE`: [`Lock::share`].
    pub fn for_share(self) -> Self {
        self.lock(Lock::share())
    }

    /// `SKIP LOCKED` on the lock set before (`FOR UPDATE` when none was): rows other
    /// transactions hold are left out.
    pub fn skip_locked(mut self) -> Self {
        let lock = self.lock.take().unwrap_or_else(Lock::update);
        self.lock(lock.skip_locked())
    }

    /// `NOWAIT` on the lock set before (`FOR UPDATE` when none was): a row another transaction
    /// holds fails the read at once (SQLSTATE 55P03).
    pub fn nowait(mut self) -> Self {
        let lock = self.lock.take().unwrap_or_else(Lock::update);
        self.lock(lock.nowait())
    }

    /// Orders by a column (`User::NAME.asc()`); later calls break ties.
    pub fn order_by(mut self, ordering: Ordering) -> Self {
        self.stmt.order_by_expr(ordering.expr, ordering.order);
        self
    }

    /// At most `n` rows.
    pub fn limit(mut self, n: u64) -> Self {
        self.stmt.limit(n);
        self
    }

    /// Skips the first `n` rows.
    pub fn offset(mut self, n: u64) -> Self {
        self.stmt.offset(n);
        self
    }

    /// Inner-joins `N` on `on`; filters may then use `N`'s columns.
    pub fn inner_join<N: Model>(mut self, on: Filter) -> Self {
        self.opaque |= on.opaque;
        self.stmt
            .join(JoinType::InnerJoin, N::meta().table_ref(), on.expr);
        self
    }

    /// Left-joins `N` on `on`; filters may then use `N`'s columns.
    pub fn left_join<N: Model>(mut self, on: Filter) -> Self {
        self.opaque |= on.opaque;
        self.stmt
            .join(JoinType::LeftJoin, N::meta().table_ref(), on.expr);
        self
    }

    /// Also returns the joined `N` of each row: `(M, Option<N>)`, `None` where a left join found
    /// nothing. `N` must have been joined.
    pub fn with<N: Model>(mut self) -> SelectPair<M, N> {
        select_columns::<N>(&mut self.stmt);
        SelectPair {
            stmt: self.stmt,
            opaque: self.opaque || self.lock.is_some(),
            _models: PhantomData,
        }
    }

    /// Returns chosen columns or aggregates instead of models: a column, an [`Aggregate`] or a
    /// tuple of them (up to four).
    pub fn select<S: Selection>(mut self, selection: S) -> Project<S> {
        self.stmt.clear_selects();
        selection.add_to(&mut self.stmt);
        Project {
            stmt: self.stmt,
            selection,
        }
    }

    /// `SELECT COUNT(*)` over this query (a locking clause on it locks the rows counted).
    pub fn count_statement(&self) -> SelectStatement {
        let mut inner = self.stmt.clone();
        inner.clear_order_by();
        Query::select()
            .expr(Func::count(Expr::col(sea_query::Asterisk)))
            .from_subquery(inner, "counted")
            .to_owned()
    }

    /// `SELECT EXISTS (…)` over this query.
    pub fn exists_statement(&self) -> SelectStatement {
        let mut inner = self.stmt.clone();
        inner.clear_order_by();
        Query::select().expr(Expr::exists(inner)).to_owned()
    }

    /// The SQL and its bound values.
    pub fn build(&self) -> (String, Values) {
        self.stmt.build(PostgresQueryBuilder)
    }

    /// The underlying sea-query statement.
    pub fn statement(&self) -> &SelectStatement {
        &self.stmt
    }
}

/// A SELECT returning pairs of models, from [`Select::with`].
#[derive(Debug, Clone)]
pub struct SelectPair<M, N> {
    pub(crate) stmt: SelectStatement,
    opaque: bool,
    _models: PhantomData<fn() -> (M, N)>,
}

impl<M: Model, N: Model> SelectPair<M, N> {
    /// As [`Select::reads_only`] (a join with a locking clause does not only read).
    pub fn reads_only(&self) -> bool {
        !self.opaque
    }

    /// The SQL and its bound values.
    pub fn build(&self) -> (String, Values) {
        self.stmt.build(PostgresQueryBuilder)
    }

    /// Decodes one row: `M`'s columns first, then `N`'s (all NULL for a missing left-join row).
    pub fn decode(row: &Row) -> Result<(M, Option<N>)> {
        let m_len = M::meta().columns.len();
        let n_len = N::meta().columns.len();
        let m_pos: Vec<usize> = (0..m_len).collect();
        let n_pos: Vec<usize> = (m_len..m_len + n_len).collect();
        let m = M::from_row(row, &m_pos)?;
        let missing = N::meta().key_columns().all(|(i, _)| {
            row.try_get::<_, crate::types::RawNull>(m_len + i)
                .is_ok_and(|n| n.0)
        });
        let n = if missing {
            None
        } else {
            Some(N::from_row(row, &n_pos)?)
        };
        Ok((m, n))
    }
}

/// What a projection returns: a column, an aggregate, or a tuple of them.
pub trait Selection: Send + 'static {
    /// What one row decodes to.
    type Output: Send + 'static;
    /// Adds the expressions to the SELECT list.
    fn add_to(&self, stmt: &mut SelectStatement);
    /// How many result columns this takes.
    fn width(&self) -> usize;
    /// Decodes the columns starting at `offset`.
    fn decode(&self, row: &Row, offset: usize) -> Result<Self::Output>;
}

impl<M: Model, T: ColumnValue> Selection for Column<M, T> {
    type Output = T;
    fn add_to(&self, stmt: &mut SelectStatement) {
        stmt.expr(crate::model::read_as(self.expr(), &self.meta().sql_type));
    }
    fn width(&self) -> usize {
        1
    }
    fn decode(&self, row: &Row, offset: usize) -> Result<T> {
        T::decode(row, offset, self.meta().name)
    }
}

/// An aggregate or other computed expression with a known result type.
#[derive(Debug, Clone)]
pub struct Aggregate<T> {
    expr: Expr,
    label: &'static str,
    _t: PhantomData<fn() -> T>,
}

impl<T: ColumnValue> Aggregate<T> {
    /// A computed expression read back as `T`.
    pub fn new(expr: Expr, label: &'static str) -> Self {
        Aggregate {
            expr,
            label,
            _t: PhantomData,
        }
    }
    /// The expression, e.g. for HAVING: `count_all().expr().gt(1)`.
    pub fn expr(&self) -> Expr {
        self.expr.clone()
    }
    /// `aggregate > value`, for HAVING.
    pub fn gt(&self, v: impl crate::model::ValueFor<T>) -> Filter {
        Filter::from_expr(self.expr.clone().gt(v.into_value()))
    }
    /// `aggregate = value`, for HAVING.
    pub fn eq(&self, v: impl crate::model::ValueFor<T>) -> Filter {
        Filter::from_expr(self.expr.clone().eq(v.into_value()))
    }
    /// Ascending order by this aggregate.
    pub fn asc(&self) -> Ordering {
        Ordering::new(self.expr.clone(), sea_query::Order::Asc)
    }
    /// Descending order by this aggregate.
    pub fn desc(&self) -> Ordering {
        Ordering::new(self.expr.clone(), sea_query::Order::Desc)
    }
}

impl<T: ColumnValue> Selection for Aggregate<T> {
    type Output = T;
    fn add_to(&self, stmt: &mut SelectStatement) {
        stmt.expr(self.expr.clone());
    }
    fn width(&self) -> usize {
        1
    }
    fn decode(&self, row: &Row, offset: usize) -> Result<T> {
        T::decode(row, offset, self.label)
    }
}

/// `COUNT(*)`
pub fn count_all() -> Aggregate<i64> {
    Aggregate::new(
        Func::count(Expr::col(sea_query::Asterisk)).into(),
        "count(*)",
    )
}

fn cast(expr: Expr, ty: &str) -> Expr {
    Expr::cust_with_expr(format!("CAST($1 AS {ty})"), expr)
}

impl<M: Model, T: ColumnValue> Column<M, T> {
    /// `COUNT(column)`: non-NULL values.
    pub fn count(self) -> Aggregate<i64> {
        Aggregate::new(Func::count(self.expr()).into(), "count")
    }
    /// `MAX(column)`, NULL over no rows.
    pub fn max(self) -> Aggregate<Option<T>>
    where
        Option<T>: ColumnValue,
    {
        Aggregate::new(Func::max(self.expr()).into(), "max")
    }
    /// `MIN(column)`, NULL over no rows.
    pub fn min(self) -> Aggregate<Option<T>>
    where
        Option<T>: ColumnValue,
    {
        Aggregate::new(Func::min(self.expr()).into(), "min")
    }
    /// `SUM(column)` as bigint (for integer columns), NULL over no rows.
    pub fn sum_i64(self) -> Aggregate<Option<i64>> {
        Aggregate::new(cast(Func::sum(self.expr()).into(), "bigint"), "sum")
    }
    /// `SUM(column)` as double precision, NULL over no rows.
    pub fn sum_f64(self) -> Aggregate<Option<f64>> {
        Aggregate::new(
            cast(Func::sum(self.expr()).into(), "double precision"),
            "sum",
        )
    }
    /// `AVG(column)` cast to double precision, NULL over no rows.
    pub fn avg_f64(self) -> Aggregate<Option<f64>> {
        Aggregate::new(
            cast(Func::avg(self.expr()).into(), "double precision"),
            "avg",
        )
    }
}

impl<M: Model, T: ColumnValue + Summable> Column<M, T> {
    /// `SUM(column)`, typed as PostgreSQL types it: `bigint` (`i64`) over `smallint` and
    /// `integer`, `numeric` (`Decimal`) over `bigint` and `numeric`, `real` and `double
    /// precision` over themselves, `interval` and `money` over themselves. NULL over no rows.
    pub fn sum(self) -> Aggregate<Option<T::Sum>>
    where
        Option<T::Sum>: ColumnValue,
    {
        Aggregate::new(Func::sum(self.expr()).into(), "sum")
    }
    /// `AVG(column)`, typed as PostgreSQL types it: `numeric` (`Decimal`) over integers and
    /// `numeric`, `double precision` (`f64`) over floats, `interval` over `interval`. NULL over
    /// no rows.
    pub fn avg(self) -> Aggregate<Option<T::Avg>>
    where
        Option<T::Avg>: ColumnValue,
    {
        Aggregate::new(Func::avg(self.expr()).into(), "avg")
    }
}

/// Column types with `SUM` and `AVG`, and the Rust types of their results (what PostgreSQL
/// returns: the sum of `integer`s is a `bigint`, their average a `numeric`).
pub trait Summable {
    /// The type of `SUM`.
    type Sum;
    /// The type of `AVG`.
    type Avg;
}

macro_rules! summable {
    ($t:ty, $sum:ty, $avg:ty) => {
        impl Summable for $t {
            type Sum = $sum;
            type Avg = $avg;
        }
    };
}
#[cfg(feature = "decimal")]
summable!(i16, i64, rust_decimal::Decimal);
#[cfg(feature = "decimal")]
summable!(i32, i64, rust_decimal::Decimal);
#[cfg(feature = "decimal")]
summable!(i64, rust_decimal::Decimal, rust_decimal::Decimal);
#[cfg(feature = "decimal")]
summable!(
    rust_decimal::Decimal,
    rust_decimal::Decimal,
    rust_decimal::Decimal
);
summable!(f32, f32, f64);
summable!(f64, f64, f64);
summable!(crate::Interval, crate::Interval, crate::Interval);

/// `money` has `SUM` but no `AVG`.
impl Summable for crate::Money {
    type Sum = crate::Money;
    type Avg = NoAverage;
}

/// The `AVG` type of a type PostgreSQL cannot average (`money`): `avg()` does not compile.
#[derive(Debug)]
pub enum NoAverage {}

impl<T: Summable> Summable for Option<T> {
    type Sum = T::Sum;
    type Avg = T::Avg;
}

macro_rules! tuple_selection {
    ($($name:ident $idx:tt),+) => {
        impl<$($name: Selection),+> Selection for ($($name,)+) {
            type Output = ($($name::Output,)+);
            fn add_to(&self, stmt: &mut SelectStatement) {
                $(self.$idx.add_to(stmt);)+
            }
            fn width(&self) -> usize {
                0 $(+ self.$idx.width())+
            }
            fn decode(&self, row: &Row, offset: usize) -> Result<Self::Output> {
                let mut at = offset;
                Ok(($({
                    let v = self.$idx.decode(row, at)?;
                    at += self.$idx.width();
                    let _ = at;
                    v
                },)+))
            }
        }
    };
}
tuple_selection!(A 0, B 1);
tuple_selection!(A 0, B 1, C 2);
tuple_selection!(A 0, B 1, C 2, D 3);

/// A SELECT of columns and aggregates, from [`Select::select`].
#[derive(Debug, Clone)]
pub struct Project<S> {
    pub(crate) stmt: SelectStatement,
    pub(crate) selection: S,
}

impl<S: Selection> Project<S> {
    /// GROUP BY a column.
    pub fn group_by<N: Model, T: ColumnValue>(mut self, column: Column<N, T>) -> Self {
        self.stmt.add_group_by([column.expr()]);
        self
    }
    /// HAVING a condition on the groups.
    pub fn having(mut self, filter: Filter) -> Self {
        self.stmt.and_having(filter.expr);
        self
    }
    /// ORDER BY.
    pub fn order_by(mut self, ordering: Ordering) -> Self {
        self.stmt.order_by_expr(ordering.expr, ordering.order);
        self
    }
    /// LIMIT.
    pub fn limit(mut self, n: u64) -> Self {
        self.stmt.limit(n);
        self
    }
    /// The SQL and its bound values.
    pub fn build(&self) -> (String, Values) {
        self.stmt.build(PostgresQueryBuilder)
    }
}

/// An UPDATE of the rows of `M` matching a filter (or one key), bypassing the identity map
/// (which forgets `M`'s rows when it runs). A new value may be a bound value, another column or
/// an [`Expression`] over the row's columns, so that a change is computed by the server from the
/// row as it is when the UPDATE runs: `balance = balance + $1` cannot lose a concurrent update.
/// On a model with a `#[orm(version)]` column the version goes up by one in every row changed
/// (unless the UPDATE sets it), so that a session holding an older copy of such a row finds it
/// stale when it saves it, instead of overwriting the change.
///
/// ```
/// use actor_orm_core::UpdateWhere;
/// # use actor_orm_core::{Column, Model};
/// # fn demo<Account: Model>(id: Column<Account, i64>, balance: Column<Account, i64>) {
/// // UPDATE "accounts" SET "balance" = "accounts"."balance" + $1 WHERE "accounts"."id" = $2
/// let deposit = UpdateWhere::<Account>::new()
///     .set(balance, balance.add(25_i64))
///     .filter(id.eq(7_i64));
/// # let _ = deposit; }
/// ```
#[derive(Debug, Clone)]
pub struct UpdateWhere<M> {
    pub(crate) sets: Vec<(usize, Node)>,
    pub(crate) filter: Option<Filter>,
    key: Option<Vec<Value>>,
    _m: PhantomData<fn() -> M>,
}

impl<M: Model> Default for UpdateWhere<M> {
    fn default() -> Self {
        UpdateWhere {
            sets: Vec::new(),
            filter: None,
            key: None,
            _m: PhantomData,
        }
    }
}

impl<M: Model> UpdateWhere<M> {
    /// An UPDATE of `M`'s table with nothing set yet; without a filter it changes every row.
    pub fn new() -> Self {
        Self::default()
    }

    /// An UPDATE of the one row with this primary key (a tuple for a composite key).
    pub fn key(key: impl IntoKey<M>) -> Self {
        UpdateWhere {
            key: Some(key.into_key_values()),
            ..Self::default()
        }
    }

    /// `SET column = value`: a value of the column's type, another column, or an expression
    /// (`Account::BALANCE.add(delta)`, `Post::EDITED_AT.coalesce(..)`, `now()`).
    pub fn set<T: ColumnValue>(
        mut self,
        column: Column<M, T>,
        value: impl IntoExpression<T>,
    ) -> Self {
        self.sets
            .push((column.index(), value.into_expression().node));
        self
    }
    /// Only rows matching `filter` (ANDed with earlier filters and the key).
    pub fn filter(mut self, filter: Filter) -> Self {
        self.filter = Some(match self.filter.take() {
            Some(f) => f.and(filter),
            None => filter,
        });
        self
    }

    fn statement(&self) -> Result<sea_query::UpdateStatement> {
        let meta = M::meta();
        if self.sets.is_empty() {
            return Err(Error::InvalidInput(format!(
                "an UPDATE of {} sets no column",
                meta.table
            )));
        }
        let mut stmt = Query::update();
        stmt.table(meta.table_ref());
        for (i, node) in &self.sets {
            let col = &meta.columns[*i];
            stmt.value(col.name, node.to_set_expr(col)?);
        }
        // A versioned row changed by an expression is a new version: a session that loaded it
        // before must find it stale when it saves, or the expression's change would be lost.
        if let Some((v, col)) = meta.version_column()
            && !self.sets.iter().any(|(i, _)| *i == v)
        {
            stmt.value(
                col.name,
                sea_query::Expr::col(sea_query::Alias::new(col.name)).add(1),
            );
        }
        if let Some(key) = &self.key {
            stmt.and_where(crate::model::key_in::<M>(&[key])?);
        }
        if let Some(f) = &self.filter {
            stmt.and_where(f.expr.clone());
        }
        Ok(stmt)
    }

    /// The SQL and its bound values; values are checked against their columns first.
    pub fn build(&self) -> Result<(String, Values)> {
        Ok(self.statement()?.build(PostgresQueryBuilder))
    }

    /// [`build`](Self::build) with `RETURNING` every column of `M`, to read the rows back.
    pub fn build_returning(&self) -> Result<(String, Values)> {
        let mut stmt = self.statement()?;
        stmt.returning(Query::returning().exprs(M::meta().returning_exprs()));
        Ok(stmt.build(PostgresQueryBuilder))
    }
}

/// A DELETE of every row of `M` matching a filter, bypassing the identity map (which forgets
/// `M`'s rows when it runs).
#[derive(Debug, Clone)]
pub struct DeleteWhere<M> {
    pub(crate) filter: Filter,
    _m: PhantomData<fn() -> M>,
}

impl<M: Model> DeleteWhere<M> {
    /// Rows matching `filter`.
    pub fn new(filter: Filter) -> Self {
        DeleteWhere {
            filter,
            _m: PhantomData,
        }
    }
    /// The SQL and its bound values.
    pub fn build(&self) -> (String, Values) {
        let mut stmt = Query::delete();
        stmt.from_table(M::meta().table_ref())
            .and_where(self.filter.expr.clone());
        stmt.build(PostgresQueryBuilder)
    }
}

/// What an upsert does when the key already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnConflict {
    /// Overwrite every non-key column with the new values.
    UpdateAll,
    /// Keep the existing row.
    DoNothing,
}
