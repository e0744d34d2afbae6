//! Typed SQL expressions over columns, for the SET clause of an update:
//! `balance = balance + $1`, `coalesce(nickname, $1)`, `updated_at = CURRENT_TIMESTAMP`.
//!
//! An [`Expression<T>`] has the Rust type `T` of the value it computes, so the compiler checks
//! that arithmetic is done on numbers, concatenation on text, and that the result fits the column
//! it is written to. Every value in it is a bound parameter, checked against the column it is
//! combined with when the statement is built (an `i64` added to an `integer` column must fit in
//! 32 bits, and is sent as one).

use std::fmt;
use std::marker::PhantomData;

use sea_query::{Expr, ExprTrait as _, Value};

use crate::error::Result;
use crate::model::{Column, ColumnMeta, Model, TextLike, ValueFor};
use crate::types::ColumnValue;

/// A typed SQL expression computing a `T`. Built from columns
/// (`Account::BALANCE.add(delta)`), from values, and from the functions here; used as the new
/// value of a column in [`UpdateWhere::set`](crate::UpdateWhere::set).
///
/// ```
/// use actor_orm_core::Expression;
/// # use actor_orm_core::{Column, Model};
/// # fn demo<M: Model>(balance: Column<M, i64>, note: Column<M, Option<String>>) {
/// let more = balance.add(10_i64).mul(2_i64);           // ("balance" + $1) * $2
/// let text = note.coalesce("none");                    // coalesce("note", $1)
/// let stamp: Expression<i64> = Expression::value(7);   // a bound value
/// # let _ = (more, text, stamp); }
/// ```
pub struct Expression<T> {
    pub(crate) node: Node,
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Expression<T> {
    fn clone(&self) -> Self {
        Expression::from_node(self.node.clone())
    }
}

impl<T> fmt::Debug for Expression<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.node, f)
    }
}

/// The untyped tree behind an [`Expression`]. Values keep the column they are combined with, so
/// they can be checked against its type when the statement is built.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    Column {
        expr: Expr,
        meta: &'static ColumnMeta,
    },
    Value {
        value: Value,
        like: Option<&'static ColumnMeta>,
    },
    Binary(Op, Box<Node>, Box<Node>),
    Coalesce(Box<Node>, Box<Node>),
    /// An SQL keyword with no operands (`CURRENT_TIMESTAMP`).
    Keyword(&'static str),
}

/// A binary operator.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    Add,
    Sub,
    Mul,
    Div,
    Concat,
}

impl Node {
    /// The column this expression's values are checked against: the first column in it.
    fn column(&self) -> Option<&'static ColumnMeta> {
        match self {
            Node::Column { meta, .. } => Some(meta),
            Node::Value { like, .. } => *like,
            Node::Binary(_, a, b) | Node::Coalesce(a, b) => a.column().or_else(|| b.column()),
            Node::Keyword(_) => None,
        }
    }

    /// Gives a value that has no column yet the type of `column`.
    fn like(self, column: Option<&'static ColumnMeta>) -> Node {
        match self {
            Node::Value { value, like: None } => Node::Value {
                value,
                like: column,
            },
            other => other,
        }
    }

    /// The sea-query expression; each value checked against (and converted for) its column.
    pub(crate) fn to_expr(&self) -> Result<Expr> {
        Ok(match self {
            Node::Column { expr, .. } => expr.clone(),
            Node::Value { value, like } => match like {
                Some(c) => Expr::val(c.sql_type.coerce(value.clone(), c.name)?),
                None => Expr::val(value.clone()),
            },
            Node::Binary(op, a, b) => {
                let (a, b) = (a.to_expr()?, b.to_expr()?);
                match op {
                    Op::Add => a.add(b),
                    Op::Sub => a.sub(b),
                    Op::Mul => a.mul(b),
                    Op::Div => a.div(b),
                    Op::Concat => Expr::cust_with_exprs("($1 || $2)", [a, b]),
                }
            }
            Node::Coalesce(a, b) => {
                Expr::cust_with_exprs("coalesce($1, $2)", [a.to_expr()?, b.to_expr()?])
            }
            Node::Keyword(k) => Expr::cust(*k),
        })
    }

    /// The expression for a SET of `column`: a bare value takes the column's type.
    pub(crate) fn to_set_expr(&self, column: &'static ColumnMeta) -> Result<Expr> {
        match self {
            Node::Value { value, like: None } => Ok(Expr::val(
                column.sql_type.coerce(value.clone(), column.name)?,
            )),
            other => other.to_expr(),
        }
    }
}

impl<T> Expression<T> {
    pub(crate) fn from_node(node: Node) -> Self {
        Expression {
            node,
            _t: PhantomData,
        }
    }

    fn binary<U>(self, op: Op, right: impl IntoExpression<T>) -> Expression<U> {
        let column = self.node.column();
        let right = right.into_expression().node.like(column);
        Expression::from_node(Node::Binary(op, Box::new(self.node), Box::new(right)))
    }
}

impl<T: ColumnValue> Expression<T> {
    /// A bound value as an expression (it takes the type of the column it is combined with).
    pub fn value(v: T) -> Self {
        Expression::from_node(Node::Value {
            value: v.to_value(),
            like: None,
        })
    }
}

/// Number types: arithmetic is allowed on their columns and expressions.
pub trait Numeric {}
impl Numeric for i16 {}
impl Numeric for i32 {}
impl Numeric for i64 {}
impl Numeric for f32 {}
impl Numeric for f64 {}
#[cfg(feature = "decimal")]
impl Numeric for rust_decimal::Decimal {}
impl<T: Numeric> Numeric for Option<T> {}

impl<T: Numeric> Expression<T> {
    /// `self + right`
    #[allow(clippy::should_implement_trait)]
    pub fn add(self, right: impl IntoExpression<T>) -> Expression<T> {
        self.binary(Op::Add, right)
    }
    /// `self - right`
    #[allow(clippy::should_implement_trait)]
    pub fn sub(self, right: impl IntoExpression<T>) -> Expression<T> {
        self.binary(Op::Sub, right)
    }
    /// `self * right`
    #[allow(clippy::should_implement_trait)]
    pub fn mul(self, right: impl IntoExpression<T>) -> Expression<T> {
        self.binary(Op::Mul, right)
    }
    /// `self / right` (integer division for integer types, as in SQL).
    #[allow(clippy::should_implement_trait)]
    pub fn div(self, right: impl IntoExpression<T>) -> Expression<T> {
        self.binary(Op::Div, right)
    }
}

impl<T: TextLike> Expression<T> {
    /// `self || right`: text concatenation (NULL when either side is NULL).
    pub fn concat(self, right: impl IntoExpression<T>) -> Expression<T> {
        self.binary(Op::Concat, right)
    }
}

impl<T> Expression<Option<T>> {
    /// `coalesce(self, fallback)`: the value, or `fallback` where it is NULL.
    pub fn coalesce(self, fallback: impl IntoExpression<T>) -> Expression<T> {
        let column = self.node.column();
        let fallback = fallback.into_expression().node.like(column);
        Expression::from_node(Node::Coalesce(Box::new(self.node), Box::new(fallback)))
    }
}

/// Types that have a "now" in SQL: `timestamptz` (`CURRENT_TIMESTAMP`), `timestamp`
/// (`LOCALTIMESTAMP`) and `date` (`CURRENT_DATE`).
pub trait CurrentTime {
    /// The SQL keyword for the current value of this type.
    const NOW: &'static str;
}
#[cfg(feature = "chrono")]
impl CurrentTime for chrono::DateTime<chrono::Utc> {
    const NOW: &'static str = "CURRENT_TIMESTAMP";
}
#[cfg(feature = "chrono")]
impl CurrentTime for chrono::NaiveDateTime {
    const NOW: &'static str = "LOCALTIMESTAMP";
}
#[cfg(feature = "chrono")]
impl CurrentTime for chrono::NaiveDate {
    const NOW: &'static str = "CURRENT_DATE";
}
impl<T: CurrentTime> CurrentTime for Option<T> {
    const NOW: &'static str = T::NOW;
}

impl<T: CurrentTime> Expression<T> {
    /// The transaction's start time as the server sees it: `CURRENT_TIMESTAMP` (what `now()`
    /// returns), `LOCALTIMESTAMP` or `CURRENT_DATE`, by the column's type.
    pub fn now() -> Expression<T> {
        Expression::from_node(Node::Keyword(T::NOW))
    }
}

/// The transaction's start time, for any time column: `.set(Post::EDITED_AT, now())` sends
/// `CURRENT_TIMESTAMP`, `LOCALTIMESTAMP` or `CURRENT_DATE` by the column's type (see
/// [`CurrentTime`]).
pub fn now() -> Now {
    Now
}

/// What [`now()`] returns: the server's current time, typed by the column it is written to.
#[derive(Debug, Clone, Copy)]
pub struct Now;

impl<T: CurrentTime> IntoExpression<T> for Now {
    fn into_expression(self) -> Expression<T> {
        Expression::now()
    }
}

/// What can stand where an expression of type `T` is expected: a value of that type (`&str` for
/// text; a plain value for a nullable column), a column holding `T`, or an [`Expression<T>`].
#[diagnostic::on_unimplemented(
    message = "a `{Self}` cannot be used where a value of type `{T}` is expected",
    label = "expected a value, column or expression of type `{T}`"
)]
pub trait IntoExpression<T> {
    /// The expression.
    fn into_expression(self) -> Expression<T>;
}

fn bound(value: Value) -> Node {
    Node::Value { value, like: None }
}

impl<T: ColumnValue> IntoExpression<T> for T {
    fn into_expression(self) -> Expression<T> {
        Expression::from_node(bound(self.to_value()))
    }
}
impl<T: ColumnValue> IntoExpression<Option<T>> for T {
    fn into_expression(self) -> Expression<Option<T>> {
        Expression::from_node(bound(self.to_value()))
    }
}
impl IntoExpression<String> for &str {
    fn into_expression(self) -> Expression<String> {
        Expression::from_node(bound(ValueFor::<String>::into_value(self)))
    }
}
impl IntoExpression<Option<String>> for &str {
    fn into_expression(self) -> Expression<Option<String>> {
        Expression::from_node(bound(ValueFor::<String>::into_value(self)))
    }
}
impl<T> IntoExpression<T> for Expression<T> {
    fn into_expression(self) -> Expression<T> {
        self
    }
}
impl<T> IntoExpression<Option<T>> for Expression<T> {
    fn into_expression(self) -> Expression<Option<T>> {
        Expression::from_node(self.node)
    }
}
impl<M: Model, T: ColumnValue> IntoExpression<T> for Column<M, T> {
    fn into_expression(self) -> Expression<T> {
        Expression::from_node(column_node(self))
    }
}
impl<M: Model, T: ColumnValue> IntoExpression<Option<T>> for Column<M, T> {
    fn into_expression(self) -> Expression<Option<T>> {
        Expression::from_node(column_node(self))
    }
}

fn column_node<M: Model, T: ColumnValue>(column: Column<M, T>) -> Node {
    Node::Column {
        expr: column.expr(),
        meta: column.meta(),
    }
}

impl<M: Model, T: ColumnValue> Column<M, T> {
    /// The column as an expression, to build on.
    pub fn expression(self) -> Expression<T> {
        Expression::from_node(column_node(self))
    }
}

impl<M: Model, T: ColumnValue + Numeric> Column<M, T> {
    /// `column + right`, e.g. `Account::BALANCE.add(delta)`.
    #[allow(clippy::should_implement_trait)]
    pub fn add(self, right: impl IntoExpression<T>) -> Expression<T> {
        self.expression().add(right)
    }
    /// `column - right`
    #[allow(clippy::should_implement_trait)]
    pub fn sub(self, right: impl IntoExpression<T>) -> Expression<T> {
        self.expression().sub(right)
    }
    /// `column * right`
    #[allow(clippy::should_implement_trait)]
    pub fn mul(self, right: impl IntoExpression<T>) -> Expression<T> {
        self.expression().mul(right)
    }
    /// `column / right` (integer division for integer columns, as in SQL).
    #[allow(clippy::should_implement_trait)]
    pub fn div(self, right: impl IntoExpression<T>) -> Expression<T> {
        self.expression().div(right)
    }
}

impl<M: Model, T: ColumnValue + TextLike> Column<M, T> {
    /// `column || right`: text concatenation (NULL when either side is NULL).
    pub fn concat(self, right: impl IntoExpression<T>) -> Expression<T> {
        self.expression().concat(right)
    }
}

impl<M: Model, T> Column<M, Option<T>>
where
    Option<T>: ColumnValue,
{
    /// `coalesce(column, fallback)`: the column's value, or `fallback` where it is NULL.
    pub fn coalesce(self, fallback: impl IntoExpression<T>) -> Expression<T> {
        self.expression().coalesce(fallback)
    }
}
