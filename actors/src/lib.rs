//! # actor-orm-actors
//!
//! The pool supervisor and session actors of actor-orm, on ractor.
//!
//! - [`Pool`] is a handle on the **pool supervisor**, the one actor that owns every connection.
//!   It leases a connection to a session on its first statement and takes it back when the
//!   session ends — however it ends: closed, dropped, panicked, killed or stopped. A connection
//!   coming back is reset (ROLLBACK, then the [`ResetPolicy`]) before anyone else sees it, or
//!   closed when the reset fails.
//! - [`Session`] is a handle on a **session actor**, which owns its identity map, unit of work,
//!   transaction and (once it needs one) its connection. Clone the handle freely; dropping the
//!   last clone ends the session.
//!
//! Use it through the `actor-orm` facade.

#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]
#![deny(clippy::unwrap_used)]

mod books;
mod config;
mod connect;
mod fork;
mod generator;
mod job;
mod label;
mod link;
mod listener;
mod migrations;
mod migrator;
mod pool;
mod replica;
mod schema;
mod session;
mod session_actor;
mod stats;
mod stream_job;
mod supervisor;
mod tls;
mod transaction;

pub use config::{IntoConfig, PoolConfig, ResetPolicy};
pub use generator::GeneratedMigration;
pub use job::BoxFuture;
pub use listener::{Event, Subscription};
pub use migrations::{Migration, Migrations, NO_TRANSACTION};
pub use migrator::MigrationStatus;
pub use pool::{Pool, PoolBuilder};
pub use replica::{Lsn, ReplicaStats};
pub use schema::SchemaModels;
pub use session::Session;
pub use stats::PoolStats;
pub use tls::SslMode;
pub use transaction::TransactionOptions;
