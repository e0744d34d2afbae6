//! Integration tests against a real PostgreSQL: the server named by `DATABASE_URL`, or a
//! throwaway cluster shared by this test binary, with one database per test.
//!
//! All integration tests live in this one binary so that they share one cluster and one link.

mod cluster;
