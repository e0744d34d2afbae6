//! Integration tests against a real PostgreSQL: the server named by `DATABASE_URL`, or a
//! throwaway cluster shared by this test binary, with one database per test.
//!
//! All integration tests live in this one binary so that they share one cluster and one link.

mod cluster;
mod core_queries;
mod core_types;
mod core_work;
mod models;

use actor_orm::{Connection, StatementMode, testing};

/// A database of its own for one test, and an ORM connection to it.
pub async fn connect(hint: &str) -> (testing::TestDatabase, Connection) {
    let db = testing::test_database(hint).await.expect("test database");
    let client = db.connect().await.expect("connect");
    (db, Connection::new(client, StatementMode::Prepared))
}

/// A second connection to the same database.
pub async fn connect_again(db: &testing::TestDatabase) -> Connection {
    Connection::new(
        db.connect().await.expect("connect"),
        StatementMode::Prepared,
    )
}
