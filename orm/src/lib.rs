//! # actor-orm-core
//!
//! Everything actor-orm does over one PostgreSQL connection, with no actors: models and their
//! metadata, the Rust ↔ PostgreSQL value mapping, typed queries on sea-query, the identity map,
//! the unit of work, transactions and DDL. The session actor in `actor-orm-actors` owns one
//! [`SessionState`] and drives it; use the `actor-orm` facade rather than this crate directly.

#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]
#![deny(clippy::unwrap_used)]

mod bind;
mod builtin;
mod cancel;
mod connection;
mod connector;
mod copy;
mod copy_out;
pub mod ddl;
mod error;
mod expression;
mod flight;
mod handover;
mod identity;
mod lock;
mod model;
mod pg_type;
mod query;
mod relation;
mod sandbox;
mod session;
mod stream;
pub mod types;
mod unit_of_work;
mod update_batch;

#[cfg(test)]
mod tests {
    use super::leaves_transaction_alone as alone;

    #[test]
    fn statements_that_cannot_change_the_transaction() {
        for sql in [
            "SELECT 1",
            "  select pg_backend_pid()",
            "(SELECT 1) UNION (SELECT 2)",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "VALUES (1)",
            "table users",
            "SHOW search_path",
        ] {
            assert!(alone(sql), "{sql}");
        }
        for sql in [
            "BEGIN",
            "start transaction",
            "COMMIT",
            "ROLLBACK",
            "CALL p()",
            "DO $$ BEGIN END $$",
            "-- comment\nSELECT 1",
            "/* x */ SELECT 1",
            "SELECTED",
            "éSELECT 1",
            "ÀBEGIN",
            "INSERT INTO t VALUES (1)",
            "",
        ] {
            assert!(!alone(sql), "{sql}");
        }
    }
}

pub use builtin::{
    Cidr, Inet, Interval, IpNet, JsonText, MacAddr, Money, PgRange, RangeElement, TsVector, Xml,
};
pub use cancel::{CancelStream, CancelTarget};
pub use connection::{Connection, SQL_LOG, StatementMode};
pub use connector::{
    ConnectFuture, Connector, Driver, ListenFuture, Notices, PlainConnector, forwarding,
};
pub use copy_out::CopyFormat;
pub use error::{Cause, DbError, Error, Holder, PoolTimeout, Result};
pub use expression::{CurrentTime, Expression, IntoExpression, Now, Numeric, now};
pub use identity::IdentityMap;
pub use lock::Lock;
pub use model::{
    Column, ColumnMeta, IndexMeta, IntoKey, Key, KeyValues, Keyed, Model, ModelMeta, SearchVector,
    SingleKey, TextLike, ValueFor, Writable,
};
pub use pg_type::PgType;
pub use query::{
    Aggregate, DeleteWhere, Filter, NoAverage, OnConflict, Ordering, Project, Select, SelectPair,
    Selection, Summable, UpdateWhere, count_all,
};
pub use relation::{
    BelongsTo, HasMany, HasOne, LoadFuture, Loader, ManyToMany, NPlusOne, Nested, Refine, Relation,
    Shape, Tree, With,
};
pub use sandbox::SANDBOX_START;
pub use sea_query;
pub use session::{Isolation, Savepoint, SessionState, TxState};
pub use stream::{
    HandedOver, QueryStream, StreamEnd, StreamMessage, StreamOptions, StreamSender, Streamable,
    stream_channel,
};
pub use tokio_postgres;
pub use types::{ColumnValue, DbEnum, NamedType, SqlType, pg_type_name, rust_type_name};
pub use unit_of_work::UnitOfWork;

/// Whether one SQL statement cannot change the connection's transaction state: it starts with
/// `SELECT`, `WITH`, `VALUES`, `TABLE` or `SHOW` (no function can BEGIN, COMMIT or ROLLBACK).
/// Anything else, including SQL starting with a comment, may (`BEGIN`, `COMMIT`, `CALL`, …).
pub fn leaves_transaction_alone(sql: &str) -> bool {
    let rest = sql.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
    // ASCII letters are one byte each, so `end` falls on a character boundary.
    let end = rest
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    let head = &rest[..end];
    ["select", "with", "values", "table", "show"]
        .iter()
        .any(|k| head.eq_ignore_ascii_case(k))
}

/// Quotes an SQL identifier (doubling embedded quotes).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Items the derive's generated code uses; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use bytes::BytesMut;
    pub use sea_query::Value;
    pub use tokio_postgres::Row;
    pub use tokio_postgres::types::{IsNull, Type};

    pub use crate::bind::encode_value;

    #[cfg(feature = "json")]
    pub use crate::types::json;
    pub use crate::types::{enum_decode, enum_null, enum_to_value};
}
