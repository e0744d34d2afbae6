//! [`PgType`]: the open mapping. Any Rust type with tokio-postgres's binary encoding
//! ([`ToSql`] and [`FromSql`], as the crates of the ecosystem already provide, or written by
//! hand) becomes a column type by naming its PostgreSQL type: it then works in models, filters,
//! batches and keys like a built-in type.
//!
//! Values travel inside the ORM as sea-query values, which have no variant for an arbitrary type.
//! A [`PgType`] value is therefore encoded when it is bound in the model (with its own `ToSql`),
//! and carried as bytes behind a tag that names the PostgreSQL type. When the statement runs, the
//! tagged bytes are written as they are, after checking that the server expects that type there
//! (a domain over it included); anywhere else they are a typed error, never sent as `bytea`.

use bytes::BytesMut;
use sea_query::Value;
use tokio_postgres::Row;
use tokio_postgres::types::{FromSql, Kind, ToSql, Type};

use crate::error::{Error, Result};
use crate::types::{ArrayElement, ColumnValue, NamedType, SqlType, decode_required};

/// A Rust type stored in a PostgreSQL type named [`TYPE_NAME`](Self::TYPE_NAME), through the
/// type's binary encoding (tokio-postgres's [`ToSql`] and [`FromSql`]).
///
/// ```
/// use std::error::Error;
/// use actor_orm_core::PgType;
/// use actor_orm_core::tokio_postgres::types::{FromSql, IsNull, ToSql, Type, to_sql_checked};
/// use bytes::BytesMut;
///
/// /// PostgreSQL's `point`: two float8s.
/// #[derive(Debug, Clone, Copy, PartialEq)]
/// struct Point { x: f64, y: f64 }
///
/// impl ToSql for Point {
///     fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
///         out.extend_from_slice(&self.x.to_be_bytes());
///         out.extend_from_slice(&self.y.to_be_bytes());
///         Ok(IsNull::No)
///     }
///     fn accepts(ty: &Type) -> bool { ty.name() == "point" }
///     to_sql_checked!();
/// }
///
/// impl<'a> FromSql<'a> for Point {
///     fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
///         let x: [u8; 8] = raw.get(..8).ok_or("short point")?.try_into()?;
///         let y: [u8; 8] = raw.get(8..16).ok_or("short point")?.try_into()?;
///         Ok(Point { x: f64::from_be_bytes(x), y: f64::from_be_bytes(y) })
///     }
///     fn accepts(ty: &Type) -> bool { ty.name() == "point" }
/// }
///
/// impl PgType for Point {
///     const TYPE_NAME: &'static str = "point";
///     // point has no equality operator: save's dirty-column check leaves it out.
///     const EQUALITY: bool = false;
/// }
/// ```
///
/// A `Point` field is then a `point` column: `#[derive(Model)] struct Place { …, at: Point }`,
/// `Place::AT.eq(Point { x: 1.0, y: 2.0 })` is a filter, and `Vec<Point>` a `point[]` column.
pub trait PgType: ToSql + for<'a> FromSql<'a> + Clone + Send + Sync + 'static {
    /// The PostgreSQL type's name, as in `pg_type` (`inet`, `hstore`, `my_enum`), found through
    /// the search path.
    const TYPE_NAME: &'static str;
    /// Whether PostgreSQL has an equality operator for the type, so that `save`'s dirty-column
    /// check can compare a loaded value with the stored one. Default `true`.
    const EQUALITY: bool = true;
}

/// Declares a column type for a PostgreSQL type the ORM has no mapping for, keeping the value's
/// binary encoding as it is (`Vec<u8>`): what `actor-orm generate` writes for such a column, so
/// that the model compiles and round-trips its rows until a real mapping replaces it.
///
/// ```
/// actor_orm_core::raw_type! {
///     /// PostgreSQL's `tsquery`, kept as its binary encoding.
///     pub struct TsQuery = "tsquery";
/// }
/// let q = TsQuery(vec![0, 0, 0, 0]);
/// assert_eq!(<TsQuery as actor_orm_core::PgType>::TYPE_NAME, "tsquery");
/// # let _ = q;
/// ```
#[macro_export]
macro_rules! raw_type {
    ($(#[$meta:meta])* $vis:vis struct $name:ident = $pg:literal;) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        $vis struct $name(pub ::std::vec::Vec<u8>);

        impl $crate::tokio_postgres::types::ToSql for $name {
            fn to_sql(
                &self,
                _: &$crate::tokio_postgres::types::Type,
                out: &mut $crate::tokio_postgres::types::private::BytesMut,
            ) -> ::std::result::Result<
                $crate::tokio_postgres::types::IsNull,
                ::std::boxed::Box<dyn ::std::error::Error + ::std::marker::Sync + ::std::marker::Send>,
            > {
                out.extend_from_slice(&self.0);
                ::std::result::Result::Ok($crate::tokio_postgres::types::IsNull::No)
            }
            fn accepts(ty: &$crate::tokio_postgres::types::Type) -> bool {
                ty.name() == $pg
            }
            $crate::tokio_postgres::types::to_sql_checked!();
        }

        impl<'a> $crate::tokio_postgres::types::FromSql<'a> for $name {
            fn from_sql(
                _: &$crate::tokio_postgres::types::Type,
                raw: &'a [u8],
            ) -> ::std::result::Result<
                Self,
                ::std::boxed::Box<dyn ::std::error::Error + ::std::marker::Sync + ::std::marker::Send>,
            > {
                ::std::result::Result::Ok($name(raw.to_vec()))
            }
            fn accepts(ty: &$crate::tokio_postgres::types::Type) -> bool {
                ty.name() == $pg
            }
        }

        impl $crate::PgType for $name {
            const TYPE_NAME: &'static str = $pg;
        }
    };
}

/// What `SqlType::Named` holds for a [`PgType`].
struct Named<T>(std::marker::PhantomData<T>);

impl<T: PgType> Named<T> {
    const TYPE: NamedType = NamedType {
        name: T::TYPE_NAME,
        equality: T::EQUALITY,
    };
}

/// The tag in front of a value encoded by its [`PgType`]: sixteen bytes no `bytea` value of a
/// user is expected to start with. After it: one byte of [`Form`], the name's length, the name,
/// and the binary encoding.
const TAG: &[u8; 16] = b"\xffactor-orm:type\x00";

/// What follows the tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// A value in its binary encoding.
    Value = 0,
    /// NULL of the type (so that an unnamed statement still declares the type).
    Null = 1,
    /// The type's `ToSql` failed: the payload is the error's text, refused when bound.
    Failed = 2,
}

fn tagged(form: Form, name: &str, payload: &[u8]) -> Value {
    let name = &name.as_bytes()[..name.len().min(255)];
    let mut out = Vec::with_capacity(TAG.len() + 2 + name.len() + payload.len());
    out.extend_from_slice(TAG);
    out.push(form as u8);
    out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(name);
    out.extend_from_slice(payload);
    Value::Bytes(Some(out))
}

/// Encodes `value` with its own `ToSql`, behind the tag naming its PostgreSQL type `name`.
pub(crate) fn encode<T: ToSql>(value: &T, name: &str) -> Value {
    let ty = Type::new(name.to_owned(), 0, Kind::Simple, String::new());
    let mut out = BytesMut::new();
    match value.to_sql(&ty, &mut out) {
        Ok(tokio_postgres::types::IsNull::No) => tagged(Form::Value, name, &out),
        Ok(tokio_postgres::types::IsNull::Yes) => tagged(Form::Null, name, &[]),
        Err(e) => tagged(Form::Failed, name, format!("{name}: {e}").as_bytes()),
    }
}

/// NULL of the PostgreSQL type `name`.
pub(crate) fn null_of(name: &str) -> Value {
    tagged(Form::Null, name, &[])
}

/// A value encoded by [`encode`]: its form, its PostgreSQL type's name and its payload.
pub(crate) struct Encoded<'a> {
    pub(crate) form: Form,
    pub(crate) name: &'a str,
    pub(crate) payload: &'a [u8],
}

/// The encoded value in `bytes`, if they carry the tag.
pub(crate) fn encoded(bytes: &[u8]) -> Option<Encoded<'_>> {
    let rest = bytes.strip_prefix(TAG.as_slice())?;
    let (&form, rest) = rest.split_first()?;
    let form = match form {
        0 => Form::Value,
        1 => Form::Null,
        2 => Form::Failed,
        _ => return None,
    };
    let (&len, rest) = rest.split_first()?;
    let name = std::str::from_utf8(rest.get(..usize::from(len))?).ok()?;
    Some(Encoded {
        form,
        name,
        payload: &rest[usize::from(len)..],
    })
}

impl<T: PgType> ColumnValue for T {
    const SQL_TYPE: SqlType = SqlType::Named(&Named::<T>::TYPE);

    fn to_value(&self) -> Value {
        encode(self, T::TYPE_NAME)
    }

    fn null_value() -> Value {
        null_of(T::TYPE_NAME)
    }

    fn decode(row: &Row, idx: usize, column: &str) -> Result<Self> {
        decode_required(row, idx, column)
    }
}

impl<T: PgType> ArrayElement for T {
    fn array_type() -> sea_query::ArrayType {
        sea_query::ArrayType::Bytes
    }
    const ELEMENT: &'static SqlType = &<T as ColumnValue>::SQL_TYPE;
}

/// The parameter type to declare for an encoded value when the server is not asked (unnamed
/// statements): the type's name with no OID, so that the server infers it from the statement.
pub(crate) fn declared(name: &str, array: bool) -> Type {
    let element = Type::new(name.to_owned(), 0, Kind::Simple, String::new());
    if array {
        Type::new(format!("_{name}"), 0, Kind::Array(element), String::new())
    } else {
        element
    }
}

/// The error for an encoded value bound where the server expects `ty`.
pub(crate) fn misplaced(enc: &Encoded<'_>, target: String, ty: &Type) -> Error {
    if enc.form == Form::Failed {
        return Error::InvalidInput(format!(
            "{target}: cannot encode the value: {}",
            String::from_utf8_lossy(enc.payload)
        ));
    }
    Error::TypeMismatch {
        column: target,
        expected: crate::types::pg_type_name(ty),
        found: format!("a {} value", enc.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoded_value_names_its_type_and_plain_bytes_are_not_one() {
        let v = encode(&7i32, "year");
        let Value::Bytes(Some(b)) = &v else {
            panic!("{v:?}")
        };
        let e = encoded(b).expect("tagged");
        assert_eq!(e.form, Form::Value);
        assert_eq!((e.name, e.payload), ("year", &7i32.to_be_bytes()[..]));
        let Value::Bytes(Some(n)) = null_of("inet") else {
            panic!("null")
        };
        assert_eq!(
            encoded(&n).map(|e| (e.form, e.name)),
            Some((Form::Null, "inet"))
        );
        assert!(encoded(b"\xffactor-orm").is_none());
        assert!(encoded(&[0, 1, 2]).is_none());
    }
}
