//! The switch that runs a test suite through a transaction pooler: with `ACTOR_ORM_TEST_VIA`
//! set to `pgbouncer`, every [`test_database`](super::test_database) is reached through one
//! PgBouncer (transaction pooling) in front of the shared cluster, started on first use and
//! removed as the cluster is.

use std::sync::OnceLock;

use super::{PgBouncer, PgBouncerOptions, TestingError, cluster_error, shared_cluster};

/// The environment variable that routes the tests' connections through a pooler: `pgbouncer`,
/// or unset for straight to the server.
pub const TEST_VIA: &str = "ACTOR_ORM_TEST_VIA";

/// Whether [`TEST_VIA`] asks for PgBouncer.
pub fn through_pgbouncer() -> bool {
    std::env::var(TEST_VIA).is_ok_and(|v| v.trim().eq_ignore_ascii_case("pgbouncer"))
}

static SHARED: OnceLock<Result<PgBouncer, String>> = OnceLock::new();

/// The PgBouncer shared by this process's test databases. Its pools are as large as a test's
/// pools get, so a test sees the pooler's behaviour, not its queue.
pub(super) fn shared_pgbouncer() -> Result<&'static PgBouncer, TestingError> {
    SHARED
        .get_or_init(|| {
            let cluster = shared_cluster().map_err(|e| e.to_string())?;
            PgBouncer::start(
                cluster.config(),
                PgBouncerOptions::new().default_pool_size(64),
            )
            .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| cluster_error("start the shared PgBouncer", e))
}
