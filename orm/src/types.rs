//! The mapping between Rust types and PostgreSQL types: one table, [`ColumnValue`].
//!
//! | Rust | PostgreSQL |
//! |---|---|
//! | `bool` | `boolean` |
//! | `i16` / `i32` / `i64` | `smallint` / `integer` / `bigint` |
//! | `f32` / `f64` | `real` / `double precision` |
//! | `String` | `text`, or `varchar(n)` with `#[orm(max_length = n)]` |
//! | `Vec<u8>` | `bytea` |
//! | `Vec<T>` | `T[]` |
//! | `Option<T>` | `T`, nullable |
//! | `uuid::Uuid` (feature `uuid`) | `uuid` |
//! | `chrono::NaiveDate`, `NaiveDateTime`, `DateTime<Utc>` (feature `chrono`) | `date`, `timestamp`, `timestamptz` |
//! | `serde_json::Value`, or any serde type with `#[orm(json)]` (feature `json`) | `jsonb` |
//! | `rust_decimal::Decimal` (feature `decimal`) | `numeric` |
//! | an enum with `#[derive(DbEnum)]` | `text`, or a PostgreSQL enum type |
//!
//! Integers are encoded with the width the server asks for: an `i64` bound where the server
//! expects `integer` is sent as a 4-byte integer when it fits, and refused with
//! [`Error::TypeMismatch`](crate::Error::TypeMismatch) when it does not — never sent with the
//! wrong width.

use bytes::BytesMut;
use sea_query::{ArrayType, Value};
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, IsNull, Kind, ToSql, Type};

use crate::error::{Error, Result};
use crate::model::ColumnMeta;

/// A PostgreSQL column type, as declared by a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SqlType {
    /// `boolean`
    Bool,
    /// `smallint`
    SmallInt,
    /// `integer`
    Integer,
    /// `bigint`
    BigInt,
    /// `real`
    Real,
    /// `double precision`
    Double,
    /// `text`
    Text,
    /// `varchar(n)`
    Varchar(u32),
    /// `bytea`
    Bytea,
    /// `uuid`
    Uuid,
    /// `date`
    Date,
    /// `timestamp` (without time zone)
    Timestamp,
    /// `timestamptz`
    TimestampTz,
    /// `jsonb`
    Jsonb,
    /// `numeric`
    Numeric,
    /// A PostgreSQL enum type of this name.
    Enum(&'static str),
    /// An array of the element type.
    Array(&'static SqlType),
    /// A type the ORM knows by name only: a [`PgType`](crate::PgType), mapped by the user or
    /// built in (`interval`, `inet`, `hstore`, ranges, …).
    Named(&'static NamedType),
}

/// A PostgreSQL type known by name (see [`SqlType::Named`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamedType {
    /// The name, as in `pg_type` and in DDL.
    pub name: &'static str,
    /// Whether PostgreSQL has an equality operator for it.
    pub equality: bool,
}

impl SqlType {
    /// The type as written in DDL.
    pub fn ddl(&self) -> String {
        match self {
            SqlType::Bool => "boolean".into(),
            SqlType::SmallInt => "smallint".into(),
            SqlType::Integer => "integer".into(),
            SqlType::BigInt => "bigint".into(),
            SqlType::Real => "real".into(),
            SqlType::Double => "double precision".into(),
            SqlType::Text => "text".into(),
            SqlType::Varchar(n) => format!("varchar({n})"),
            SqlType::Bytea => "bytea".into(),
            SqlType::Uuid => "uuid".into(),
            SqlType::Date => "date".into(),
            SqlType::Timestamp => "timestamp".into(),
            SqlType::TimestampTz => "timestamptz".into(),
            SqlType::Jsonb => "jsonb".into(),
            SqlType::Numeric => "numeric".into(),
            SqlType::Enum(name) => crate::quote_ident(name),
            SqlType::Array(inner) => format!("{}[]", inner.ddl()),
            SqlType::Named(t) => t.name.to_owned(),
        }
    }

    /// The type a column of this type is read as, when not as itself: an enum (or an array of
    /// one) as text. Reading an enum as itself makes tokio-postgres look its type up with a
    /// named statement of its own, which behind a transaction pooler may be gone by the next
    /// transaction, or collide with another client's of the same name.
    pub fn read_as(&self) -> Option<&'static str> {
        match self {
            SqlType::Enum(_) => Some("text"),
            SqlType::Array(SqlType::Enum(_)) => Some("text[]"),
            _ => None,
        }
    }

    /// Whether PostgreSQL has an equality operator for this type (`json`, `xml` and `point`
    /// have none), so that a loaded value can be compared with the stored one.
    pub fn has_equality(&self) -> bool {
        match self {
            SqlType::Array(element) => element.has_equality(),
            SqlType::Named(t) => t.equality,
            SqlType::Bool
            | SqlType::SmallInt
            | SqlType::Integer
            | SqlType::BigInt
            | SqlType::Real
            | SqlType::Double
            | SqlType::Text
            | SqlType::Varchar(_)
            | SqlType::Bytea
            | SqlType::Uuid
            | SqlType::Date
            | SqlType::Timestamp
            | SqlType::TimestampTz
            | SqlType::Jsonb
            | SqlType::Numeric
            | SqlType::Enum(_) => true,
        }
    }

    /// Checks a value against this column type before anything is sent, and converts integer
    /// and float widths to the column's. Errors name the column.
    pub fn coerce(&self, value: Value, column: &str) -> Result<Value> {
        let out_of_range = |v: &dyn std::fmt::Display| {
            Error::mismatch(column, self.ddl(), format!("{v} (out of range)"))
        };
        Ok(match (self, value) {
            (SqlType::SmallInt, v @ (Value::Int(_) | Value::BigInt(_) | Value::SmallInt(_))) => {
                match int_of(&v) {
                    None => Value::SmallInt(None),
                    Some(i) => {
                        Value::SmallInt(Some(i16::try_from(i).map_err(|_| out_of_range(&i))?))
                    }
                }
            }
            (SqlType::Integer, v @ (Value::Int(_) | Value::BigInt(_) | Value::SmallInt(_))) => {
                match int_of(&v) {
                    None => Value::Int(None),
                    Some(i) => Value::Int(Some(i32::try_from(i).map_err(|_| out_of_range(&i))?)),
                }
            }
            (SqlType::BigInt, v @ (Value::Int(_) | Value::BigInt(_) | Value::SmallInt(_))) => {
                Value::BigInt(int_of(&v))
            }
            (SqlType::Text | SqlType::Varchar(_), Value::String(Some(s))) => {
                check_text(&s, column)?;
                if let SqlType::Varchar(n) = self {
                    let len = s.chars().count();
                    if len > *n as usize {
                        return Err(Error::mismatch(
                            column,
                            self.ddl(),
                            format!("a string of {len} characters"),
                        ));
                    }
                }
                Value::String(Some(s))
            }
            #[cfg(feature = "decimal")]
            (SqlType::Numeric, Value::Double(Some(f))) => {
                Value::Decimal(Some(rust_decimal::Decimal::try_from(f).map_err(|_| {
                    Error::mismatch(
                        column,
                        "numeric",
                        format!("{f} (not a finite number numeric can hold)"),
                    )
                })?))
            }
            (_, Value::Double(Some(f))) if !f.is_finite() && matches!(self, SqlType::Numeric) => {
                return Err(Error::mismatch(column, "numeric", f.to_string()));
            }
            (_, v) => v,
        })
    }
}

fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::SmallInt(i) => i.map(i64::from),
        Value::Int(i) => i.map(i64::from),
        Value::BigInt(i) => *i,
        _ => None,
    }
}

/// Text PostgreSQL cannot store: it has no NUL character.
pub(crate) fn check_text(s: &str, column: &str) -> Result<()> {
    if s.contains('\0') {
        return Err(Error::InvalidInput(format!(
            "{column}: text cannot contain a NUL (0x00) character; PostgreSQL does not store it"
        )));
    }
    Ok(())
}

/// A Rust type that can be stored in a column: its SQL type, how it becomes a bound value, and
/// how it is read back from a row.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be stored in a column",
    label = "unsupported field type",
    note = "supported: bool, i16, i32, i64, f32, f64, String, Vec<u8>, Vec<T>, Option<T>, uuid::Uuid, chrono dates and times, serde_json::Value, rust_decimal::Decimal, Interval, Inet, Cidr, IpAddr, MacAddr, Money, PgRange<T>, HashMap<String, Option<String>> (hstore), TsVector, Xml, JsonText, u32 (oid), enums with #[derive(DbEnum)], any serde type with #[orm(json)], or a type of your own that implements PgType",
    note = "multi-dimensional arrays (Vec<Vec<T>>) are not supported: store them with #[orm(json)], or map a type of your own with PgType"
)]
pub trait ColumnValue: Sized + Send + Sync + 'static {
    /// The column type this Rust type maps to.
    const SQL_TYPE: SqlType;
    /// Whether NULL is a value of this type (`Option<T>`).
    const NULLABLE: bool = false;

    /// The value to bind.
    fn to_value(&self) -> Value;
    /// A NULL of this type.
    fn null_value() -> Value;
    /// Reads column `idx` of `row`; `column` names it in errors.
    fn decode(row: &Row, idx: usize, column: &str) -> Result<Self>;
    /// Reads column `idx` of `row`, NULL as `None` (for `Option<Self>`). The default asks
    /// whether the value is NULL, then [`decode`](Self::decode)s it; a type tokio-postgres
    /// decodes itself reads it in one step.
    #[inline]
    fn decode_nullable(row: &Row, idx: usize, column: &str) -> Result<Option<Self>> {
        if row.columns().get(idx).is_none() {
            return Err(Error::mismatch(
                column,
                "a column in the result",
                "no such column",
            ));
        }
        // NULL of any column type is None; otherwise the type decides.
        if row.try_get::<_, RawNull>(idx).is_ok_and(|n| n.0) {
            return Ok(None);
        }
        Self::decode(row, idx, column).map(Some)
    }
    /// Whether this is the "not set" value of an auto-increment key (zero).
    fn is_unset_key(&self) -> bool {
        false
    }
    /// Writes the value as `column`'s field of a binary COPY, for the server type `ty`: the
    /// same checks and conversions as binding it to an INSERT, with the same typed errors. The
    /// default goes through [`to_value`](Self::to_value); the built-in types write themselves
    /// when the column and the server agree on their own type.
    #[inline]
    fn encode(&self, column: &ColumnMeta, ty: &Type, out: &mut BytesMut) -> Result<IsNull> {
        crate::bind::encode_value(self.to_value(), column, ty, out)
    }
}

/// The fast path of [`ColumnValue::encode`]: a value written by its own `ToSql` where its
/// column is declared with the type's own SQL type and the server's type is one the Rust type
/// encodes exactly as a bound value would be (no coercion, no width change); any other
/// combination goes through the bound-value path.
macro_rules! encode_exactly {
    ($t:ty, $($ok:ident)|+) => {
        #[inline]
        fn encode(&self, column: &ColumnMeta, ty: &Type, out: &mut BytesMut) -> Result<IsNull> {
            if column.sql_type == Self::SQL_TYPE && matches!(*ty, $(Type::$ok)|+) {
                return ToSql::to_sql(self, ty, out)
                    .map_err(|e| crate::bind::encode_error(e, column.name));
            }
            crate::bind::encode_value(self.to_value(), column, ty, out)
        }
    };
}

/// A PostgreSQL type as a user writes it: `integer`, not `int4`; `text[]`, not `_text`.
pub fn pg_type_name(ty: &Type) -> String {
    if let Kind::Array(element) = ty.kind() {
        return format!("{}[]", pg_type_name(element));
    }
    match *ty {
        Type::BOOL => "boolean",
        Type::INT2 => "smallint",
        Type::INT4 => "integer",
        Type::INT8 => "bigint",
        Type::FLOAT4 => "real",
        Type::FLOAT8 => "double precision",
        Type::BPCHAR => "character",
        Type::VARCHAR => "varchar",
        _ => ty.name(),
    }
    .to_owned()
}

/// A Rust type as a user writes it: `String`, not `alloc::string::String`;
/// `Option<Vec<i32>>`, not `core::option::Option<alloc::vec::Vec<i32>>`.
pub fn rust_type_name<T: ?Sized>() -> String {
    short_type_name(std::any::type_name::<T>())
}

fn short_type_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut segment = String::new();
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            segment.push(c);
        } else {
            out.push_str(segment.rsplit("::").next().unwrap_or(&segment));
            segment.clear();
            out.push(c);
        }
    }
    out.push_str(segment.rsplit("::").next().unwrap_or(&segment));
    out
}

/// Reads a non-NULL value of a type tokio-postgres can decode, with typed errors.
#[inline]
pub fn decode_required<T>(row: &Row, idx: usize, column: &str) -> Result<T>
where
    T: for<'a> FromSql<'a>,
{
    decode_named(row, idx, column, rust_type_name::<T>)
}

/// [`decode_required`], naming the Rust type `rust` in errors.
#[inline(always)]
fn decode_named<T>(row: &Row, idx: usize, column: &str, rust: impl Fn() -> String) -> Result<T>
where
    T: for<'a> FromSql<'a>,
{
    match decode_optional_named::<T>(row, idx, column, rust)? {
        Some(v) => Ok(v),
        None => Err(null_error(column)),
    }
}

/// Reads a possibly NULL value of a type tokio-postgres can decode, with typed errors.
#[inline]
pub fn decode_optional<T>(row: &Row, idx: usize, column: &str) -> Result<Option<T>>
where
    T: for<'a> FromSql<'a>,
{
    decode_optional_named(row, idx, column, rust_type_name::<T>)
}

/// The Rust type's name (`rust`) is only worked out for an error.
#[inline(always)]
fn decode_optional_named<T>(
    row: &Row,
    idx: usize,
    column: &str,
    rust: impl Fn() -> String,
) -> Result<Option<T>>
where
    T: for<'a> FromSql<'a>,
{
    // One lookup and one type check on the way that succeeds (tokio-postgres checks the type
    // itself); the error is worked out only when there is one.
    match row.try_get::<_, Option<T>>(idx) {
        Ok(v) => Ok(v),
        Err(e) => Err(decode_error::<T>(row, idx, column, rust, e)),
    }
}

/// Why column `idx` of `row` did not decode as `T`.
#[cold]
#[inline(never)]
fn decode_error<T>(
    row: &Row,
    idx: usize,
    column: &str,
    rust: impl Fn() -> String,
    e: tokio_postgres::Error,
) -> Error
where
    T: for<'a> FromSql<'a>,
{
    match row.columns().get(idx) {
        None => Error::mismatch(column, "a column in the result", "no such column"),
        Some(col) if !<T as FromSql>::accepts(col.type_()) => {
            Error::mismatch(column, rust(), pg_type_name(col.type_()))
        }
        Some(_) => Error::mismatch(column, rust(), e.to_string()),
    }
}

/// A NULL where the field is not an `Option`.
#[cold]
#[inline(never)]
fn null_error(column: &str) -> Error {
    Error::mismatch(column, "a value (the field is not an Option)", "NULL")
}

macro_rules! plain {
    ($t:ty, $sql:expr, $variant:ident $(, $($ok:ident)|+)? $(; { $($own:tt)* })?) => {
        impl ColumnValue for $t {
            const SQL_TYPE: SqlType = $sql;
            $(encode_exactly!($t, $($ok)|+);)?
            $($($own)*)?
            fn to_value(&self) -> Value {
                Value::$variant(Some(self.clone()))
            }
            fn null_value() -> Value {
                Value::$variant(None)
            }
            #[inline]
            fn decode(row: &Row, idx: usize, column: &str) -> Result<Self> {
                decode_required(row, idx, column)
            }
            #[inline]
            fn decode_nullable(row: &Row, idx: usize, column: &str) -> Result<Option<Self>> {
                decode_optional(row, idx, column)
            }
        }
    };
}

/// An integer read from a column of the same or a narrower integer type (widening is exact).
struct Widened<T>(T);

macro_rules! widened {
    ($t:ty, $($ok:ident),+) => {
        impl<'a> FromSql<'a> for Widened<$t> {
            fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
                Ok(Widened(match *ty {
                    Type::INT2 => <$t>::from(i16::from_sql(ty, raw)?),
                    Type::INT4 => <$t>::try_from(i32::from_sql(ty, raw)?)?,
                    _ => <$t>::try_from(i64::from_sql(ty, raw)?)?,
                }))
            }
            fn accepts(ty: &Type) -> bool {
                matches!(*ty, $(Type::$ok)|+)
            }
        }
    };
}
widened!(i16, INT2);
widened!(i32, INT2, INT4);
widened!(i64, INT2, INT4, INT8);

macro_rules! integer {
    ($t:ty, $sql:expr, $variant:ident, $ok:ident) => {
        impl ColumnValue for $t {
            const SQL_TYPE: SqlType = $sql;
            encode_exactly!($t, $ok);
            fn to_value(&self) -> Value {
                Value::$variant(Some(*self))
            }
            fn null_value() -> Value {
                Value::$variant(None)
            }
            #[inline]
            fn decode(row: &Row, idx: usize, column: &str) -> Result<Self> {
                decode_named::<Widened<$t>>(row, idx, column, || stringify!($t).to_owned())
                    .map(|w| w.0)
            }
            #[inline]
            fn decode_nullable(row: &Row, idx: usize, column: &str) -> Result<Option<Self>> {
                decode_optional_named::<Widened<$t>>(row, idx, column, || stringify!($t).to_owned())
                    .map(|w| w.map(|w| w.0))
            }
            fn is_unset_key(&self) -> bool {
                *self == 0
            }
        }
    };
}

plain!(bool, SqlType::Bool, Bool, BOOL);
integer!(i16, SqlType::SmallInt, SmallInt, INT2);
integer!(i32, SqlType::Integer, Int, INT4);
integer!(i64, SqlType::BigInt, BigInt, INT8);
plain!(f32, SqlType::Real, Float, FLOAT4);
plain!(f64, SqlType::Double, Double, FLOAT8);
plain!(String, SqlType::Text, String; {
    /// Text is written as its UTF-8 bytes where the column is `text` and the server expects a
    /// text type, after the check a bound value gets (no NUL).
    #[inline]
    fn encode(&self, column: &ColumnMeta, ty: &Type, out: &mut BytesMut) -> Result<IsNull> {
        if column.sql_type == SqlType::Text
            && matches!(*ty, Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME)
        {
            check_text(self, column.name)?;
            out.extend_from_slice(self.as_bytes());
            return Ok(IsNull::No);
        }
        crate::bind::encode_value(self.to_value(), column, ty, out)
    }
});
#[cfg(feature = "uuid")]
plain!(uuid::Uuid, SqlType::Uuid, Uuid, UUID);
#[cfg(feature = "chrono")]
plain!(chrono::NaiveDate, SqlType::Date, ChronoDate, DATE);
#[cfg(feature = "chrono")]
plain!(
    chrono::NaiveDateTime,
    SqlType::Timestamp,
    ChronoDateTime,
    TIMESTAMP
);
#[cfg(feature = "chrono")]
plain!(
    chrono::DateTime<chrono::Utc>,
    SqlType::TimestampTz,
    ChronoDateTimeUtc,
    TIMESTAMPTZ
);
#[cfg(feature = "decimal")]
plain!(rust_decimal::Decimal, SqlType::Numeric, Decimal, NUMERIC);

impl ColumnValue for Vec<u8> {
    const SQL_TYPE: SqlType = SqlType::Bytea;
    fn to_value(&self) -> Value {
        Value::Bytes(Some(self.clone()))
    }
    fn null_value() -> Value {
        Value::Bytes(None)
    }
    fn decode(row: &Row, idx: usize, column: &str) -> Result<Self> {
        decode_required(row, idx, column)
    }
}

#[cfg(feature = "json")]
impl ColumnValue for serde_json::Value {
    const SQL_TYPE: SqlType = SqlType::Jsonb;
    fn to_value(&self) -> Value {
        Value::Json(Some(Box::new(self.clone())))
    }
    fn null_value() -> Value {
        Value::Json(None)
    }
    fn decode(row: &Row, idx: usize, column: &str) -> Result<Self> {
        decode_required(row, idx, column)
    }
}

impl<T: ColumnValue> ColumnValue for Option<T> {
    const SQL_TYPE: SqlType = T::SQL_TYPE;
    const NULLABLE: bool = true;
    fn to_value(&self) -> Value {
        match self {
            Some(v) => v.to_value(),
            None => T::null_value(),
        }
    }
    fn null_value() -> Value {
        T::null_value()
    }
    #[inline]
    fn decode(row: &Row, idx: usize, column: &str) -> Result<Self> {
        T::decode_nullable(row, idx, column)
    }
    #[inline]
    fn encode(&self, column: &ColumnMeta, ty: &Type, out: &mut BytesMut) -> Result<IsNull> {
        match self {
            Some(v) => v.encode(column, ty, out),
            // A NULL as the bound-value path writes it (a type of its own may refuse a column).
            None => crate::bind::encode_value(T::null_value(), column, ty, out),
        }
    }
}

/// Decodes only whether a value is NULL, for any column type.
pub(crate) struct RawNull(pub(crate) bool);

impl<'a> FromSql<'a> for RawNull {
    fn from_sql(_: &Type, _: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawNull(false))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawNull(true))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

/// An element type of a PostgreSQL array column (`Vec<T>`).
pub trait ArrayElement: ColumnValue + for<'a> FromSql<'a> {
    /// sea-query's name for the element type.
    fn array_type() -> ArrayType;
    /// The element's SQL type, as a static.
    const ELEMENT: &'static SqlType;
}

macro_rules! element {
    ($t:ty, $variant:ident, $sql:expr) => {
        impl ArrayElement for $t {
            fn array_type() -> ArrayType {
                ArrayType::$variant
            }
            const ELEMENT: &'static SqlType = &$sql;
        }
    };
}

element!(bool, Bool, SqlType::Bool);
element!(i16, SmallInt, SqlType::SmallInt);
element!(i32, Int, SqlType::Integer);
element!(i64, BigInt, SqlType::BigInt);
element!(f32, Float, SqlType::Real);
element!(f64, Double, SqlType::Double);
element!(String, String, SqlType::Text);
#[cfg(feature = "uuid")]
element!(uuid::Uuid, Uuid, SqlType::Uuid);
#[cfg(feature = "decimal")]
element!(rust_decimal::Decimal, Decimal, SqlType::Numeric);

impl<T: ArrayElement> ColumnValue for Vec<T> {
    const SQL_TYPE: SqlType = SqlType::Array(T::ELEMENT);
    fn to_value(&self) -> Value {
        Value::Array(
            T::array_type(),
            Some(Box::new(self.iter().map(ColumnValue::to_value).collect())),
        )
    }
    fn null_value() -> Value {
        Value::Array(T::array_type(), None)
    }
    fn decode(row: &Row, idx: usize, column: &str) -> Result<Self> {
        decode_required(row, idx, column)
    }
}

/// An enum stored as text or as a PostgreSQL enum type; written by `#[derive(DbEnum)]`.
pub trait DbEnum: Sized + Send + Sync + 'static {
    /// The PostgreSQL enum type, or `None` for a text column.
    const TYPE_NAME: Option<&'static str>;
    /// Every variant's label, in declaration order.
    const LABELS: &'static [&'static str];
    /// This variant's label.
    fn label(&self) -> &'static str;
    /// The variant with this label.
    fn from_label(label: &str) -> Option<Self>;
}

/// [`ColumnValue::to_value`] for a [`DbEnum`].
pub fn enum_to_value<E: DbEnum>(e: &E) -> Value {
    enum_value::<E>(Some(e.label()))
}

/// [`ColumnValue::null_value`] for a [`DbEnum`].
pub fn enum_null<E: DbEnum>() -> Value {
    enum_value::<E>(None)
}

fn enum_value<E: DbEnum>(label: Option<&'static str>) -> Value {
    match E::TYPE_NAME {
        // Rendered as CAST($n AS type): the parameter itself is text in every statement mode.
        Some(type_name) => Value::Enum(match label {
            Some(l) => sea_query::OptionEnum::Some(Box::new(sea_query::Enum {
                type_name: type_name.into(),
                value: l.into(),
            })),
            None => sea_query::OptionEnum::None(type_name.into()),
        }),
        None => Value::String(label.map(str::to_owned)),
    }
}

/// [`ColumnValue::decode`] for a [`DbEnum`].
pub fn enum_decode<E: DbEnum>(row: &Row, idx: usize, column: &str) -> Result<E> {
    let label = decode_required::<EnumLabel>(row, idx, column)?.0;
    E::from_label(&label).ok_or_else(|| {
        Error::mismatch(
            column,
            format!("one of {:?}", E::LABELS),
            format!("{label:?}"),
        )
    })
}

/// Text of a text-like column or of any PostgreSQL enum.
struct EnumLabel(String);

impl<'a> FromSql<'a> for EnumLabel {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(EnumLabel(std::str::from_utf8(raw)?.to_owned()))
    }
    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Enum(_))
            || matches!(*ty, Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME)
    }
}

/// Typed JSON stored as jsonb: what `#[orm(json)]` fields use.
#[cfg(feature = "json")]
pub mod json {
    use super::*;

    /// Serialises a field to a jsonb value.
    pub fn to_value<T: serde::Serialize>(v: &T, column: &str) -> Result<Value> {
        serde_json::to_value(v)
            .map(|j| Value::Json(Some(Box::new(j))))
            .map_err(|e| Error::InvalidInput(format!("{column}: cannot serialise to JSON: {e}")))
    }

    /// Reads a jsonb column into a serde type.
    pub fn decode<T: serde::de::DeserializeOwned>(
        row: &Row,
        idx: usize,
        column: &str,
    ) -> Result<T> {
        let raw: serde_json::Value =
            decode_optional(row, idx, column)?.unwrap_or(serde_json::Value::Null);
        serde_json::from_value(raw)
            .map_err(|e| Error::mismatch(column, rust_type_name::<T>(), e.to_string()))
    }
}

/// Whether [`decode_key_part`] reads a column of this type.
pub(crate) fn is_key_part_type(ty: &Type) -> bool {
    #[cfg(feature = "uuid")]
    if *ty == Type::UUID {
        return true;
    }
    matches!(
        *ty,
        Type::INT2
            | Type::INT4
            | Type::INT8
            | Type::TEXT
            | Type::VARCHAR
            | Type::BPCHAR
            | Type::NAME
    )
}

/// Column `idx` of `row` as a key value, whatever its integer width or text type: for grouping
/// rows by a column that holds another table's key.
pub(crate) fn decode_key_part(row: &Row, idx: usize) -> Result<Value> {
    let Some(col) = row.columns().get(idx) else {
        return Err(Error::mismatch(
            "a key column",
            "a column in the result",
            "no such column",
        ));
    };
    let ty = col.type_().clone();
    Ok(match ty {
        Type::INT2 | Type::INT4 | Type::INT8 => {
            Value::BigInt(decode_optional::<Widened<i64>>(row, idx, col.name())?.map(|w| w.0))
        }
        #[cfg(feature = "uuid")]
        Type::UUID => Value::Uuid(decode_optional::<uuid::Uuid>(row, idx, col.name())?),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            Value::String(decode_optional::<String>(row, idx, col.name())?)
        }
        _ => {
            return Err(Error::mismatch(
                col.name(),
                "an integer, text or uuid key",
                pg_type_name(&ty),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value written by its own [`ColumnValue::encode`] and through the bound-value path
    /// (`to_value`, coercion, bind): bytes, or the error's text.
    fn both<T: ColumnValue>(
        v: &T,
        sql_type: SqlType,
        ty: Type,
    ) -> [Result<Option<Vec<u8>>, String>; 2] {
        let column = ColumnMeta::new("c", "c", sql_type);
        let run = |f: &dyn Fn(&mut BytesMut) -> Result<IsNull>| {
            let mut out = BytesMut::new();
            match f(&mut out) {
                Ok(IsNull::Yes) => Ok(None),
                Ok(IsNull::No) => Ok(Some(out.to_vec())),
                Err(e) => Err(e.to_string()),
            }
        };
        [
            run(&|out| v.encode(&column, &ty, out)),
            run(&|out| crate::bind::encode_value(v.to_value(), &column, &ty, out)),
        ]
    }

    #[track_caller]
    fn same<T: ColumnValue>(v: T, sql_type: SqlType, ty: Type) -> Result<Option<Vec<u8>>, String> {
        let [own, bound] = both(&v, sql_type, ty.clone());
        assert_eq!(own, bound, "{sql_type:?} as {ty}");
        own
    }

    #[test]
    fn a_value_writes_itself_as_the_bound_value_path_does() {
        assert_eq!(
            same(7i16, SqlType::SmallInt, Type::INT2),
            Ok(Some(vec![0, 7]))
        );
        assert_eq!(
            same(7i32, SqlType::Integer, Type::INT4),
            Ok(Some(vec![0, 0, 0, 7]))
        );
        assert_eq!(
            same(7i64, SqlType::BigInt, Type::INT8),
            Ok(Some(7i64.to_be_bytes().to_vec()))
        );
        same(true, SqlType::Bool, Type::BOOL).expect("bool");
        same(1.5f32, SqlType::Real, Type::FLOAT4).expect("real");
        same(1.5f64, SqlType::Double, Type::FLOAT8).expect("double");
        for ty in [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME] {
            assert_eq!(
                same("héllo".to_owned(), SqlType::Text, ty),
                Ok(Some("héllo".into()))
            );
        }
        assert_eq!(same(None::<String>, SqlType::Text, Type::TEXT), Ok(None));
        assert_eq!(
            same(Some(9i32), SqlType::Integer, Type::INT4),
            Ok(Some(vec![0, 0, 0, 9]))
        );
        assert_eq!(same(None::<i32>, SqlType::Integer, Type::INT4), Ok(None));
    }

    #[test]
    fn where_column_or_server_differ_the_bound_value_path_decides() {
        // The width follows the server's type.
        assert_eq!(
            same(7i32, SqlType::Integer, Type::INT8),
            Ok(Some(7i64.to_be_bytes().to_vec()))
        );
        assert_eq!(
            same(7i64, SqlType::BigInt, Type::INT2),
            Ok(Some(vec![0, 7]))
        );
        let too_big = same(1i64 << 40, SqlType::BigInt, Type::INT4).expect_err("out of range");
        assert_eq!(
            too_big,
            "type mismatch for c: expected integer, found 1099511627776 (out of range)"
        );
        // The column's declared type is checked first.
        let long =
            same("abcd".to_owned(), SqlType::Varchar(2), Type::VARCHAR).expect_err("too long");
        assert!(long.contains("a string of 4 characters"), "{long}");
        let nul = same("a\0b".to_owned(), SqlType::Text, Type::TEXT).expect_err("NUL");
        assert!(nul.contains("c: text cannot contain a NUL"), "{nul}");
        let not_text = same("x".to_owned(), SqlType::Text, Type::INT4).expect_err("mismatch");
        assert_eq!(
            not_text,
            "type mismatch for c: expected integer, found text"
        );
        let not_int = same(1i32, SqlType::Integer, Type::TEXT).expect_err("mismatch");
        assert!(
            not_int.starts_with("type mismatch for c: expected text"),
            "{not_int}"
        );
    }
}
