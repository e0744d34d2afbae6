//! PostgreSQL types that Rust's standard types do not cover, mapped through [`PgType`]:
//! `interval`, `inet` and `cidr`, `macaddr`, `money`, ranges, `hstore`, `tsvector`, `xml`, `json`
//! as text, `oid` and `time`. Each is a plain Rust value with the type's binary encoding.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::net::IpAddr;
use std::ops::Bound;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{FromSql, IsNull, Kind, ToSql, Type, to_sql_checked};

use crate::pg_type::PgType;

type BoxError = Box<dyn StdError + Sync + Send>;

fn named(ty: &Type, name: &str) -> bool {
    ty.name() == name
}

fn take<const N: usize>(raw: &mut &[u8]) -> Result<[u8; N], BoxError> {
    let (head, rest) = raw
        .split_at_checked(N)
        .ok_or("the value is shorter than its type's encoding")?;
    *raw = rest;
    Ok(head.try_into()?)
}

/// PostgreSQL's `interval`: months, days and microseconds, kept apart as PostgreSQL keeps them
/// (a month is not a fixed number of days, nor a day of hours across a DST change).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Interval {
    /// Whole months (a year is 12).
    pub months: i32,
    /// Whole days.
    pub days: i32,
    /// Microseconds.
    pub microseconds: i64,
}

impl Interval {
    /// An interval of months, days and microseconds.
    pub const fn new(months: i32, days: i32, microseconds: i64) -> Self {
        Interval {
            months,
            days,
            microseconds,
        }
    }
}

impl ToSql for Interval {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_i64(self.microseconds);
        out.put_i32(self.days);
        out.put_i32(self.months);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }
    to_sql_checked!();
}

impl<'a> FromSql<'a> for Interval {
    fn from_sql(_: &Type, mut raw: &'a [u8]) -> Result<Self, BoxError> {
        let microseconds = i64::from_be_bytes(take(&mut raw)?);
        let days = i32::from_be_bytes(take(&mut raw)?);
        let months = i32::from_be_bytes(take(&mut raw)?);
        Ok(Interval {
            months,
            days,
            microseconds,
        })
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::INTERVAL
    }
}

impl PgType for Interval {
    const TYPE_NAME: &'static str = "interval";
}

/// An address with its network prefix length, as `inet` (a host address in its network) or
/// `cidr` (a network) hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    /// The address.
    pub addr: IpAddr,
    /// The prefix length (32 or 128 for a single host).
    pub prefix: u8,
}

/// PostgreSQL's `inet`. (A plain [`IpAddr`] maps to `inet` too, for single hosts.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Inet(pub IpNet);

/// PostgreSQL's `cidr`: a network (no bits set right of the prefix, or the server refuses it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr(pub IpNet);

fn net_to_sql(net: &IpNet, cidr: bool, out: &mut BytesMut) {
    let (family, bytes): (u8, Vec<u8>) = match net.addr {
        IpAddr::V4(a) => (2, a.octets().to_vec()),
        IpAddr::V6(a) => (3, a.octets().to_vec()),
    };
    out.put_u8(family);
    out.put_u8(net.prefix);
    out.put_u8(u8::from(cidr));
    out.put_u8(u8::try_from(bytes.len()).unwrap_or(16));
    out.put_slice(&bytes);
}

fn net_from_sql(mut raw: &[u8]) -> Result<IpNet, BoxError> {
    let [family, prefix, _cidr, len] = take::<4>(&mut raw)?;
    let addr = match (family, len) {
        (2, 4) => IpAddr::from(take::<4>(&mut raw)?),
        (3, 16) => IpAddr::from(take::<16>(&mut raw)?),
        _ => return Err(format!("an address of family {family} and length {len}").into()),
    };
    Ok(IpNet { addr, prefix })
}

macro_rules! net_type {
    ($t:ident, $name:literal, $cidr:literal) => {
        impl ToSql for $t {
            fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
                net_to_sql(&self.0, $cidr, out);
                Ok(IsNull::No)
            }
            fn accepts(ty: &Type) -> bool {
                named(ty, $name)
            }
            to_sql_checked!();
        }
        impl<'a> FromSql<'a> for $t {
            fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
                net_from_sql(raw).map($t)
            }
            fn accepts(ty: &Type) -> bool {
                named(ty, $name)
            }
        }
        impl PgType for $t {
            const TYPE_NAME: &'static str = $name;
        }
    };
}
net_type!(Inet, "inet", false);
net_type!(Cidr, "cidr", true);

impl PgType for IpAddr {
    const TYPE_NAME: &'static str = "inet";
}

/// PostgreSQL's `macaddr`: six bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl ToSql for MacAddr {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_slice(&self.0);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::MACADDR
    }
    to_sql_checked!();
}

impl<'a> FromSql<'a> for MacAddr {
    fn from_sql(_: &Type, mut raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(MacAddr(take(&mut raw)?))
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::MACADDR
    }
}

impl PgType for MacAddr {
    const TYPE_NAME: &'static str = "macaddr";
}

/// PostgreSQL's `money`: an amount in the currency's smallest unit (cents under the usual
/// `lc_monetary`, with two fraction digits), as the server stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Money(pub i64);

impl ToSql for Money {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        out.put_i64(self.0);
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::MONEY
    }
    to_sql_checked!();
}

impl<'a> FromSql<'a> for Money {
    fn from_sql(_: &Type, mut raw: &'a [u8]) -> Result<Self, BoxError> {
        Ok(Money(i64::from_be_bytes(take(&mut raw)?)))
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::MONEY
    }
}

impl PgType for Money {
    const TYPE_NAME: &'static str = "money";
}

impl PgType for u32 {
    const TYPE_NAME: &'static str = "oid";
}

impl PgType for HashMap<String, Option<String>> {
    const TYPE_NAME: &'static str = "hstore";
    // hstore has `=`.
}

#[cfg(feature = "chrono")]
impl PgType for chrono::NaiveTime {
    const TYPE_NAME: &'static str = "time";
}

/// Text kept as PostgreSQL's `xml` (checked for well-formedness by the server).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Xml(pub String);

/// Text kept as PostgreSQL's `json`, exactly as written (key order, spacing and duplicate keys
/// kept; `jsonb` normalises them).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct JsonText(pub String);

macro_rules! text_type {
    ($t:ident, $name:literal, $equality:literal) => {
        impl ToSql for $t {
            fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
                out.put_slice(self.0.as_bytes());
                Ok(IsNull::No)
            }
            fn accepts(ty: &Type) -> bool {
                named(ty, $name)
            }
            to_sql_checked!();
        }
        impl<'a> FromSql<'a> for $t {
            fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, BoxError> {
                Ok($t(std::str::from_utf8(raw)?.to_owned()))
            }
            fn accepts(ty: &Type) -> bool {
                named(ty, $name)
            }
        }
        impl PgType for $t {
            const TYPE_NAME: &'static str = $name;
            const EQUALITY: bool = $equality;
        }
    };
}
text_type!(Xml, "xml", false);
text_type!(JsonText, "json", false);

/// A range of `T`: `int4range` (`i32`), `int8range` (`i64`), `numrange` (`Decimal`), `daterange`,
/// `tsrange` and `tstzrange` (chrono dates and times). Bounds are inclusive, exclusive or
/// unbounded; the server normalises discrete ranges (`[1,3]` reads back as `[1,4)`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PgRange<T> {
    /// The empty range.
    Empty,
    /// A range between two bounds.
    Between(Bound<T>, Bound<T>),
}

/// An element type of a range, and the range type's name.
pub trait RangeElement: ToSql + for<'a> FromSql<'a> + Clone + Send + Sync + 'static {
    /// The range type over this element (`int4range` for `i32`).
    const RANGE: &'static str;
}

impl RangeElement for i32 {
    const RANGE: &'static str = "int4range";
}
impl RangeElement for i64 {
    const RANGE: &'static str = "int8range";
}
#[cfg(feature = "decimal")]
impl RangeElement for rust_decimal::Decimal {
    const RANGE: &'static str = "numrange";
}
#[cfg(feature = "chrono")]
impl RangeElement for chrono::NaiveDate {
    const RANGE: &'static str = "daterange";
}
#[cfg(feature = "chrono")]
impl RangeElement for chrono::NaiveDateTime {
    const RANGE: &'static str = "tsrange";
}
#[cfg(feature = "chrono")]
impl RangeElement for chrono::DateTime<chrono::Utc> {
    const RANGE: &'static str = "tstzrange";
}

const RANGE_EMPTY: u8 = 0x01;
const LOWER_INCLUSIVE: u8 = 0x02;
const UPPER_INCLUSIVE: u8 = 0x04;
const LOWER_INFINITE: u8 = 0x08;
const UPPER_INFINITE: u8 = 0x10;

fn element_type(ty: &Type) -> Type {
    match ty.kind() {
        Kind::Range(element) => element.clone(),
        _ => Type::new(String::new(), 0, Kind::Simple, String::new()),
    }
}

fn put_bound<T: ToSql>(
    bound: &Bound<T>,
    element: &Type,
    out: &mut BytesMut,
) -> Result<u8, BoxError> {
    let (value, flags) = match bound {
        Bound::Included(v) => (Some(v), 0b01),
        Bound::Excluded(v) => (Some(v), 0b00),
        Bound::Unbounded => (None, 0b10),
    };
    if let Some(v) = value {
        let at = out.len();
        out.put_i32(0);
        if let IsNull::Yes = v.to_sql(element, out)? {
            return Err("a range bound cannot be NULL".into());
        }
        let len = i32::try_from(out.len() - at - 4)?;
        out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }
    Ok(flags)
}

impl<T: RangeElement> ToSql for PgRange<T> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let flags_at = out.len();
        out.put_u8(0);
        let flags = match self {
            PgRange::Empty => RANGE_EMPTY,
            PgRange::Between(lower, upper) => {
                // Element encodings do not depend on the element's OID here.
                let element = element_type(ty);
                let l = put_bound(lower, &element, out)?;
                let u = put_bound(upper, &element, out)?;
                (if l & 1 == 1 { LOWER_INCLUSIVE } else { 0 })
                    | (if l & 2 == 2 { LOWER_INFINITE } else { 0 })
                    | (if u & 1 == 1 { UPPER_INCLUSIVE } else { 0 })
                    | (if u & 2 == 2 { UPPER_INFINITE } else { 0 })
            }
        };
        out[flags_at] = flags;
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        named(ty, T::RANGE)
    }
    to_sql_checked!();
}

fn read_bound<'a, T: FromSql<'a>>(
    raw: &mut &'a [u8],
    element: &Type,
    infinite: bool,
    inclusive: bool,
) -> Result<Bound<T>, BoxError> {
    if infinite {
        return Ok(Bound::Unbounded);
    }
    let len = usize::try_from(i32::from_be_bytes(take(raw)?))?;
    let (value, rest) = raw
        .split_at_checked(len)
        .ok_or("a range bound is shorter than its length")?;
    *raw = rest;
    let v = T::from_sql(element, value)?;
    Ok(if inclusive {
        Bound::Included(v)
    } else {
        Bound::Excluded(v)
    })
}

impl<'a, T: RangeElement> FromSql<'a> for PgRange<T> {
    fn from_sql(ty: &Type, mut raw: &'a [u8]) -> Result<Self, BoxError> {
        let [flags] = take::<1>(&mut raw)?;
        if flags & RANGE_EMPTY != 0 {
            return Ok(PgRange::Empty);
        }
        let element = match ty.kind() {
            Kind::Range(e) => e.clone(),
            _ => return Err(format!("{} is not a range type", ty.name()).into()),
        };
        let lower = read_bound(
            &mut raw,
            &element,
            flags & LOWER_INFINITE != 0,
            flags & LOWER_INCLUSIVE != 0,
        )?;
        let upper = read_bound(
            &mut raw,
            &element,
            flags & UPPER_INFINITE != 0,
            flags & UPPER_INCLUSIVE != 0,
        )?;
        Ok(PgRange::Between(lower, upper))
    }
    fn accepts(ty: &Type) -> bool {
        named(ty, T::RANGE)
    }
}

impl<T: RangeElement> PgType for PgRange<T> {
    const TYPE_NAME: &'static str = T::RANGE;
}

/// PostgreSQL's `tsvector`, as its text form (`'fat':2 'rat':3A`): written and read as text,
/// normalised by the server (lexemes sorted and de-duplicated). Search with
/// [`Column::matches`](crate::Column::matches).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TsVector(pub String);

impl ToSql for TsVector {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, BoxError> {
        let lexemes = parse_tsvector(&self.0)?;
        out.put_i32(i32::try_from(lexemes.len())?);
        for (word, positions) in lexemes {
            out.put_slice(word.as_bytes());
            out.put_u8(0);
            out.put_u16(u16::try_from(positions.len())?);
            for p in positions {
                out.put_u16(p);
            }
        }
        Ok(IsNull::No)
    }
    fn accepts(ty: &Type) -> bool {
        named(ty, "tsvector")
    }
    to_sql_checked!();
}

impl<'a> FromSql<'a> for TsVector {
    fn from_sql(_: &Type, mut raw: &'a [u8]) -> Result<Self, BoxError> {
        let n = i32::from_be_bytes(take(&mut raw)?);
        let mut text = String::new();
        for _ in 0..n {
            let end = raw
                .iter()
                .position(|b| *b == 0)
                .ok_or("a lexeme without its end")?;
            let word = std::str::from_utf8(&raw[..end])?;
            raw = &raw[end + 1..];
            if !text.is_empty() {
                text.push(' ');
            }
            text.push('\'');
            for c in word.chars() {
                if c == '\'' || c == '\\' {
                    text.push(c);
                }
                text.push(c);
            }
            text.push('\'');
            let npos = u16::from_be_bytes(take(&mut raw)?);
            for i in 0..npos {
                let p = u16::from_be_bytes(take(&mut raw)?);
                text.push(if i == 0 { ':' } else { ',' });
                text.push_str(&(p & 0x3fff).to_string());
                match p >> 14 {
                    3 => text.push('A'),
                    2 => text.push('B'),
                    1 => text.push('C'),
                    _ => {}
                }
            }
        }
        Ok(TsVector(text))
    }
    fn accepts(ty: &Type) -> bool {
        named(ty, "tsvector")
    }
}

impl PgType for TsVector {
    const TYPE_NAME: &'static str = "tsvector";
}

/// Parses a tsvector's text form into lexemes and encoded positions (weight in the top two
/// bits: A = 3 … D = 0).
fn parse_tsvector(text: &str) -> Result<Vec<(String, Vec<u16>)>, BoxError> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(&first) = chars.peek() else {
            break;
        };
        let mut word = String::new();
        if first == '\'' {
            chars.next();
            loop {
                match chars.next() {
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        word.push('\'');
                    }
                    Some('\'') => break,
                    Some('\\') => word.push(chars.next().ok_or("a tsvector ends in \\")?),
                    Some(c) => word.push(c),
                    None => return Err("a tsvector lexeme is not closed".into()),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == ':' {
                    break;
                }
                chars.next();
                word.push(if c == '\\' {
                    chars.next().ok_or("a tsvector ends in \\")?
                } else {
                    c
                });
            }
        }
        let mut positions = Vec::new();
        if chars.peek() == Some(&':') {
            chars.next();
            loop {
                let mut digits = String::new();
                while let Some(&c) = chars.peek().filter(|c| c.is_ascii_digit()) {
                    digits.push(c);
                    chars.next();
                }
                let pos: u16 = digits
                    .parse()
                    .map_err(|_| format!("a tsvector position is not a number: {text:?}"))?;
                let weight = match chars.peek() {
                    Some('A' | 'a') => 3,
                    Some('B' | 'b') => 2,
                    Some('C' | 'c') => 1,
                    Some('D' | 'd') => 0,
                    _ => 4,
                };
                if weight < 4 {
                    chars.next();
                }
                positions.push((weight % 4) << 14 | pos.min(0x3fff));
                if chars.peek() == Some(&',') {
                    chars.next();
                } else {
                    break;
                }
            }
        }
        out.push((word, positions));
    }
    // PostgreSQL keeps lexemes in byte order, each once.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|b, a| {
        if a.0 == b.0 {
            a.1.append(&mut b.1);
            true
        } else {
            false
        }
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsvector_text_goes_round_through_its_binary_form() {
        let v = TsVector("'fat':2 'rat':3A 'it''s' cat".into());
        let mut out = BytesMut::new();
        v.to_sql(&Type::TEXT, &mut out).expect("encode");
        let back = TsVector::from_sql(&Type::TEXT, &out).expect("decode");
        assert_eq!(back.0, "'cat' 'fat':2 'it''s' 'rat':3A");
    }

    #[test]
    fn a_range_of_integers_encodes_its_bounds_and_flags() {
        let ty = Type::INT4_RANGE;
        let r = PgRange::Between(Bound::Included(1), Bound::Excluded(10));
        let mut out = BytesMut::new();
        r.to_sql(&ty, &mut out).expect("encode");
        assert_eq!(out[0], LOWER_INCLUSIVE);
        assert_eq!(PgRange::<i32>::from_sql(&ty, &out).expect("decode"), r);
        let open: PgRange<i32> = PgRange::Between(Bound::Unbounded, Bound::Included(5));
        out.clear();
        open.to_sql(&ty, &mut out).expect("encode");
        assert_eq!(PgRange::<i32>::from_sql(&ty, &out).expect("decode"), open);
    }
}
