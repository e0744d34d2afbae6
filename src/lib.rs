//! # actor-orm
//!
//! A declarative ORM for PostgreSQL in which every session is an actor.
//!
//! This crate is the facade: depend on it alone. The pieces live in `actor-orm-core` (models,
//! queries, identity map, unit of work), `actor-orm-derive` (`#[derive(Model)]`) and
//! `actor-orm-actors` (the pool supervisor and session actors).
//!
//! ```no_run
//! use actor_orm::prelude::*;
//!
//! #[derive(Model, Clone, Debug, PartialEq)]
//! #[orm(table_name = "users")]
//! struct User {
//!     #[orm(primary_key, auto_increment)]
//!     id: i64,
//!     name: String,
//!     email: Option<String>,
//! }
//!
//! # async fn demo() -> actor_orm::Result<()> {
//! // One pool per program; one session (an actor) per request, job or loop iteration.
//! let pool = Pool::builder("postgres://app@localhost/app?sslmode=verify-full")
//!     .max_size(16)
//!     .build()
//!     .await?;
//! let s = pool.session().await?;
//! let ann = s.insert(User { id: 0, name: "ann".into(), email: None }).await?;
//! let found = s.all(User::query().filter(User::NAME.eq("ann"))).await?;
//! assert_eq!(found, vec![ann]);
//! s.commit().await?;
//! # Ok(()) }
//! ```
//!
//! `SessionState` drives the same core over one `Connection` without actors.
//!
//! `actor_orm::testing` (feature `testing`) gives tests and examples a PostgreSQL of their own.
//!
//! ## `#[derive(Model)]`
//!
//! On the struct: `table_name = "..."` (default: the struct's name in snake_case, e.g.
//! `UserAccount` → `user_account`), `schema = "..."` and `dirty_check = false` (`save` then
//! overwrites without checking that the columns it changes still hold their loaded values).
//!
//! On a field: `primary_key` (on one or more fields), `auto_increment` (an identity column; a
//! zero value is left to the database), `column_name = "..."`, `default` or `default = "SQL"` (an
//! `Option` field; `None` leaves the column to its database default, read back after INSERT),
//! `version` (optimistic locking), `skip`, `json` (any serde type, stored as jsonb),
//! `references = Parent` (a foreign key to `Parent`'s primary key), `unique`,
//! `max_length = n` (`varchar(n)`), `index` (an index on the column, for DDL and generated
//! migrations). On the struct, `index(columns = "a, b", unique = true, name = "...")` declares a
//! composite one. Unknown keys are compile errors.

#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "testing")]
pub mod testing;

pub mod migrate_command;

pub use actor_orm_actors::{
    BoxFuture, Event, GeneratedMigration, IntoConfig, Lsn, Migration, MigrationStatus, Migrations,
    Pool, PoolBuilder, PoolConfig, PoolStats, ReplicaStats, ResetPolicy, SchemaModels, Session,
    SslMode, Subscription, TransactionOptions,
};
pub use actor_orm_core::raw_type;
pub use actor_orm_core::sea_query::Value;
pub use actor_orm_core::{
    Aggregate, Column, ColumnMeta, ColumnValue, Connection, CurrentTime, DbEnum, DbError,
    DeleteWhere, Error, Expression, Filter, IdentityMap, IntoExpression, IntoKey, Isolation, Key,
    Lock, Model, ModelMeta, Now, Numeric, OnConflict, Ordering, Project, Result, Savepoint, Select,
    SelectPair, Selection, SessionState, SqlType, StatementMode, TxState, UpdateWhere, count_all,
    ddl, now, sea_query, tokio_postgres, types,
};
pub use actor_orm_core::{
    BelongsTo, HasMany, HasOne, Loader, ManyToMany, NPlusOne, Nested, Relation, Tree, With,
};
pub use actor_orm_core::{
    CancelStream, CancelTarget, Cause, ConnectFuture, Connector, Driver, Holder, KeyValues,
    PlainConnector, PoolTimeout,
};
pub use actor_orm_core::{
    Cidr, Inet, Interval, IpNet, JsonText, Keyed, MacAddr, Money, NamedType, NoAverage, PgRange,
    PgType, RangeElement, SQL_LOG, SearchVector, SingleKey, Summable, TextLike, TsVector, ValueFor,
    Writable, Xml, pg_type_name, rust_type_name,
};
pub use actor_orm_core::{CopyFormat, QueryStream, StreamOptions, Streamable};
/// `#[actor_orm::test]`: a test in the sandbox (see [`testing::Sandbox`]).
#[cfg(feature = "testing")]
pub use actor_orm_derive::test;
pub use actor_orm_derive::{DbEnum, Model, embed_migrations};

/// The names most programs need.
pub mod prelude {
    pub use crate::{
        Column, Connection, DbEnum, Error, Expression, Filter, Isolation, Lock, Model, OnConflict,
        Pool, ResetPolicy, Result, Select, Session, SessionState, TransactionOptions, UpdateWhere,
        count_all,
    };
}

/// Items the derive's generated code uses; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use actor_orm_core as core;
    pub use serde;
}
