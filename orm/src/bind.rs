//! Binding sea-query values as tokio-postgres parameters, encoded with the type the server asked
//! for: the width of an integer follows the parameter, not the Rust value.

use std::error::Error as StdError;
use std::fmt;

use bytes::BytesMut;
use sea_query::Value;
use tokio_postgres::types::{IsNull, Kind, ToSql, Type, to_sql_checked};

use crate::error::Error;

type BoxError = Box<dyn StdError + Sync + Send>;

/// One bound parameter: a value, its position, and the column it is written to when known.
#[derive(Debug)]
pub(crate) struct Bind<'a> {
    value: &'a Value,
    index: usize,
    column: Option<&'a str>,
}

impl<'a> Bind<'a> {
    /// Parameter `$index` (1-based) holding `value`, written to `column` if known.
    pub(crate) fn new(value: &'a Value, index: usize, column: Option<&'a str>) -> Self {
        Bind {
            value,
            index,
            column,
        }
    }

    fn mismatch(&self, ty: &Type, found: impl Into<String>) -> BoxError {
        Box::new(BindError::Mismatch {
            target: self.target(),
            expected: crate::types::pg_type_name(ty),
            found: found.into(),
        })
    }

    fn target(&self) -> String {
        match self.column {
            Some(c) => c.to_owned(),
            None => format!("parameter ${}", self.index),
        }
    }
}

/// A value that could not be encoded; nothing was sent.
#[derive(Debug, Clone)]
pub(crate) enum BindError {
    Mismatch {
        target: String,
        expected: String,
        found: String,
    },
    Invalid(String),
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::Mismatch {
                target,
                expected,
                found,
            } => {
                write!(f, "{target}: expected {expected}, found {found}")
            }
            BindError::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl StdError for BindError {}

impl BindError {
    pub(crate) fn into_error(self) -> Error {
        match self {
            BindError::Mismatch {
                target,
                expected,
                found,
            } => Error::TypeMismatch {
                column: target,
                expected,
                found,
            },
            BindError::Invalid(msg) => Error::InvalidInput(msg),
        }
    }
}

fn is_text(ty: &Type) -> bool {
    matches!(
        *ty,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN
    ) || matches!(ty.kind(), Kind::Enum(_))
        || ty.name() == "citext"
}

impl Bind<'_> {
    fn encode_int(&self, i: i128, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let range = |_| self.mismatch(ty, format!("{i} (out of range)"));
        match *ty {
            Type::INT2 => i16::try_from(i).map_err(range)?.to_sql(ty, out),
            Type::INT4 => i32::try_from(i).map_err(range)?.to_sql(ty, out),
            Type::INT8 => i64::try_from(i).map_err(range)?.to_sql(ty, out),
            Type::OID => u32::try_from(i).map_err(range)?.to_sql(ty, out),
            // Integers convert exactly to double precision within ±2^53; beyond, refuse.
            Type::FLOAT8 if i.unsigned_abs() <= 1 << 53 => (i as f64).to_sql(ty, out),
            Type::FLOAT4 if i.unsigned_abs() <= 1 << 24 => (i as f32).to_sql(ty, out),
            #[cfg(feature = "decimal")]
            Type::NUMERIC => rust_decimal::Decimal::from_i128_with_scale(i, 0).to_sql(ty, out),
            _ => Err(self.mismatch(ty, format!("an integer ({i})"))),
        }
    }

    fn encode_float(&self, f: f64, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        match *ty {
            Type::FLOAT8 => f.to_sql(ty, out),
            Type::FLOAT4 => {
                let narrow = f as f32;
                if f.is_finite() && !narrow.is_finite() {
                    return Err(self.mismatch(ty, format!("{f} (out of range)")));
                }
                narrow.to_sql(ty, out)
            }
            #[cfg(feature = "decimal")]
            Type::NUMERIC => match rust_decimal::Decimal::try_from(f) {
                Ok(d) => d.to_sql(ty, out),
                Err(_) => Err(self.mismatch(ty, format!("{f} (numeric cannot hold it)"))),
            },
            _ => Err(self.mismatch(ty, format!("a float ({f})"))),
        }
    }

    fn encode_text(&self, s: &str, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        if s.contains('\0') {
            return Err(Box::new(BindError::Invalid(format!(
                "{}: text cannot contain a NUL (0x00) character; PostgreSQL does not store it",
                self.target()
            ))));
        }
        if is_text(ty) {
            out.extend_from_slice(s.as_bytes());
            return Ok(IsNull::No);
        }
        Err(self.mismatch(ty, "text"))
    }

    /// Delegates to tokio-postgres's own encoding after checking the type, so that a mismatch
    /// is our typed error and never a panic.
    fn delegate<T: ToSql>(
        &self,
        v: &T,
        ty: &Type,
        out: &mut BytesMut,
        what: &str,
    ) -> Result<IsNull, BoxError> {
        if !T::accepts(ty) {
            return Err(self.mismatch(ty, what));
        }
        v.to_sql(ty, out)
    }
}

impl ToSql for Bind<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        if is_null(self.value) {
            return Ok(IsNull::Yes);
        }
        // A domain is written as its base type (the server checks the domain's constraints).
        if let Kind::Domain(base) = ty.kind() {
            return self
                .to_sql(base, out)
                .map_err(|e| match e.downcast::<BindError>() {
                    Ok(b) => match *b {
                        BindError::Mismatch {
                            target,
                            expected,
                            found,
                        } => Box::new(BindError::Mismatch {
                            target,
                            expected: format!(
                                "{} (a domain over {expected})",
                                crate::types::pg_type_name(ty)
                            ),
                            found,
                        }) as BoxError,
                        other => Box::new(other),
                    },
                    Err(other) => other,
                });
        }
        match self.value {
            Value::Bool(Some(b)) => self.delegate(b, ty, out, "a boolean"),
            Value::TinyInt(Some(i)) => self.encode_int(i128::from(*i), ty, out),
            Value::SmallInt(Some(i)) => self.encode_int(i128::from(*i), ty, out),
            Value::Int(Some(i)) => self.encode_int(i128::from(*i), ty, out),
            Value::BigInt(Some(i)) => self.encode_int(i128::from(*i), ty, out),
            Value::TinyUnsigned(Some(i)) => self.encode_int(i128::from(*i), ty, out),
            Value::SmallUnsigned(Some(i)) => self.encode_int(i128::from(*i), ty, out),
            Value::Unsigned(Some(i)) => self.encode_int(i128::from(*i), ty, out),
            Value::BigUnsigned(Some(i)) => self.encode_int(i128::from(*i), ty, out),
            Value::Float(Some(f)) => self.encode_float(f64::from(*f), ty, out),
            Value::Double(Some(f)) => self.encode_float(*f, ty, out),
            Value::String(Some(s)) => self.encode_text(s, ty, out),
            Value::Char(Some(c)) => self.encode_text(c.encode_utf8(&mut [0; 4]), ty, out),
            Value::Enum(sea_query::OptionEnum::Some(e)) => self.encode_text(&e.value, ty, out),
            Value::Bytes(Some(b)) => match crate::pg_type::encoded(b) {
                // A value of a PgType: written as encoded where the server expects its type.
                Some(enc) => {
                    let fits = enc.form != crate::pg_type::Form::Failed
                        && (ty.oid() == 0 || ty.name() == enc.name);
                    if !fits {
                        let e = crate::pg_type::misplaced(&enc, self.target(), ty);
                        return Err(Box::new(match e {
                            Error::TypeMismatch {
                                column,
                                expected,
                                found,
                            } => BindError::Mismatch {
                                target: column,
                                expected,
                                found,
                            },
                            other => BindError::Invalid(other.to_string()),
                        }));
                    }
                    if enc.form == crate::pg_type::Form::Null {
                        return Ok(IsNull::Yes);
                    }
                    out.extend_from_slice(enc.payload);
                    Ok(IsNull::No)
                }
                None => self.delegate(b, ty, out, "bytes"),
            },
            #[cfg(feature = "json")]
            Value::Json(Some(j)) => {
                if contains_nul(j) {
                    return Err(Box::new(BindError::Invalid(format!(
                        "{}: JSON text cannot contain a NUL (\\u0000) character in jsonb",
                        self.target()
                    ))));
                }
                self.delegate(j.as_ref(), ty, out, "JSON")
            }
            #[cfg(feature = "uuid")]
            Value::Uuid(Some(u)) => self.delegate(u, ty, out, "a uuid"),
            #[cfg(feature = "chrono")]
            Value::ChronoDate(Some(d)) => self.delegate(d, ty, out, "a date"),
            #[cfg(feature = "chrono")]
            Value::ChronoDateTime(Some(d)) => self.delegate(d, ty, out, "a timestamp"),
            #[cfg(feature = "chrono")]
            Value::ChronoDateTimeUtc(Some(d)) => self.delegate(d, ty, out, "a timestamptz"),
            #[cfg(feature = "decimal")]
            Value::Decimal(Some(d)) => self.delegate(d, ty, out, "a decimal"),
            Value::Array(_, Some(items)) => {
                if !matches!(ty.kind(), Kind::Array(_)) {
                    return Err(self.mismatch(ty, "an array"));
                }
                let binds: Vec<Bind<'_>> = items
                    .iter()
                    .map(|v| Bind {
                        value: v,
                        index: self.index,
                        column: self.column,
                    })
                    .collect();
                binds.to_sql(ty, out)
            }
            other => Err(Box::new(BindError::Invalid(format!(
                "{}: values of this kind are not supported: {other:?}",
                self.target()
            )))),
        }
    }

    fn accepts(_: &Type) -> bool {
        // The real check needs the value, so it happens in to_sql.
        true
    }

    fn encode_format(&self, ty: &Type) -> tokio_postgres::types::Format {
        // An untyped parameter is read with the input function of the type the server infers:
        // text form (UTF-8, the client encoding tokio-postgres sets). Text is the same bytes in
        // both forms.
        if *ty == Type::UNKNOWN && matches!(self.value, Value::String(_) | Value::Char(_)) {
            tokio_postgres::types::Format::Text
        } else {
            tokio_postgres::types::Format::Binary
        }
    }

    to_sql_checked!();
}

#[cfg(feature = "json")]
fn contains_nul(j: &serde_json::Value) -> bool {
    match j {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(contains_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// Whether a value is SQL NULL (any variant holding `None`).
pub(crate) fn is_null(v: &Value) -> bool {
    match v {
        Value::Enum(e) => !e.is_some(),
        Value::Array(_, a) => a.is_none(),
        other => !other.is_some(),
    }
}

impl<'a> Bind<'a> {
    /// The bound value.
    pub(crate) fn value(&self) -> &'a Value {
        self.value
    }
}

/// The parameter type to declare for a value when the server is not asked (unnamed statements).
/// Enums are cast in the SQL text, so their parameter is text.
pub(crate) fn param_type(v: &Value) -> Type {
    match v {
        Value::Bool(_) => Type::BOOL,
        Value::TinyInt(_) | Value::SmallInt(_) | Value::TinyUnsigned(_) => Type::INT2,
        Value::Int(_) | Value::SmallUnsigned(_) => Type::INT4,
        Value::BigInt(_) | Value::Unsigned(_) | Value::BigUnsigned(_) => Type::INT8,
        Value::Float(_) => Type::FLOAT4,
        Value::Double(_) => Type::FLOAT8,
        // Untyped, in text form, as a literal is: the server reads it as the type it infers
        // (citext, varchar, a domain), so a comparison means what it means with a prepared
        // statement (declared `text`, `citext_col = $1` would compare as text, case and all).
        Value::String(_) | Value::Char(_) => Type::UNKNOWN,
        Value::Enum(_) => Type::TEXT,
        Value::Bytes(Some(b)) => match crate::pg_type::encoded(b) {
            Some(enc) => crate::pg_type::declared(enc.name, false),
            None => Type::BYTEA,
        },
        Value::Bytes(None) => Type::BYTEA,
        #[cfg(feature = "json")]
        Value::Json(_) => Type::JSONB,
        #[cfg(feature = "uuid")]
        Value::Uuid(_) => Type::UUID,
        #[cfg(feature = "chrono")]
        Value::ChronoDate(_) => Type::DATE,
        #[cfg(feature = "chrono")]
        Value::ChronoDateTime(_) => Type::TIMESTAMP,
        #[cfg(feature = "chrono")]
        Value::ChronoDateTimeUtc(_) => Type::TIMESTAMPTZ,
        #[cfg(feature = "decimal")]
        Value::Decimal(_) => Type::NUMERIC,
        Value::Array(sea_query::ArrayType::Bytes, Some(items)) => {
            match items.iter().find_map(|v| match v {
                Value::Bytes(Some(b)) => crate::pg_type::encoded(b),
                _ => None,
            }) {
                Some(enc) => crate::pg_type::declared(enc.name, true),
                None => Type::BYTEA_ARRAY,
            }
        }
        Value::Array(ty, _) => array_type(ty),
        #[allow(unreachable_patterns)]
        _ => Type::UNKNOWN,
    }
}

fn array_type(ty: &sea_query::ArrayType) -> Type {
    use sea_query::ArrayType as A;
    match ty {
        A::Bool => Type::BOOL_ARRAY,
        A::TinyInt | A::SmallInt | A::TinyUnsigned => Type::INT2_ARRAY,
        A::Int | A::SmallUnsigned => Type::INT4_ARRAY,
        A::BigInt | A::Unsigned | A::BigUnsigned => Type::INT8_ARRAY,
        A::Float => Type::FLOAT4_ARRAY,
        A::Double => Type::FLOAT8_ARRAY,
        A::String | A::Char => Type::TEXT_ARRAY,
        A::Bytes => Type::BYTEA_ARRAY,
        #[cfg(feature = "uuid")]
        A::Uuid => Type::UUID_ARRAY,
        #[cfg(feature = "decimal")]
        A::Decimal => Type::NUMERIC_ARRAY,
        // Reached only with sea-query features this crate does not map.
        #[allow(unreachable_patterns)]
        _ => Type::UNKNOWN,
    }
}

/// Writes `value`, checked against and converted for `column` as a bound parameter is, in
/// PostgreSQL's binary format for the server type `ty` (a COPY field): a value that does not
/// fit is the same typed error an INSERT gives, naming the column.
pub fn encode_value(
    value: Value,
    column: &crate::model::ColumnMeta,
    ty: &Type,
    out: &mut BytesMut,
) -> crate::error::Result<IsNull> {
    let value = column.sql_type.coerce(value, column.name)?;
    Bind::new(&value, 0, Some(column.name))
        .to_sql(ty, out)
        .map_err(|e| encode_error(e, column.name))
}

/// An encoding failure as the crate's error: a [`BindError`] as itself, anything else
/// (tokio-postgres's own encoders) naming the column.
#[cold]
pub(crate) fn encode_error(e: BoxError, column: &str) -> Error {
    match e.downcast::<BindError>() {
        Ok(b) => b.into_error(),
        Err(other) => Error::InvalidInput(format!("{column}: {other}")),
    }
}
