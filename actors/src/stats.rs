//! What a pool reports about itself.

/// A snapshot of a pool, from [`crate::Pool::stats`].
///
/// Every lease ends exactly one way, so at any moment
/// `checkouts == checkins + reclaims + discards + in_use`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PoolStats {
    /// The most connections the pool opens.
    pub max_size: usize,
    /// Connections open now (idle, in use, being reset or checked).
    pub total: usize,
    /// Connections ready to hand out.
    pub idle: usize,
    /// Connections leased to sessions.
    pub in_use: usize,
    /// Connections being reset or health-checked.
    pub resetting: usize,
    /// Connections being opened.
    pub connecting: usize,
    /// Sessions waiting for a connection.
    pub waiting: usize,
    /// Bumped on every connection-class error; older connections are checked before reuse.
    pub generation: u64,
    /// Connections opened since the pool started.
    pub opened: u64,
    /// Connections closed since the pool started (retired, broken or failing a reset).
    pub closed: u64,
    /// Failed attempts to open a connection.
    pub connect_failures: u64,
    /// Leases handed to sessions.
    pub checkouts: u64,
    /// Leases the session gave back itself (closed or dropped handle).
    pub checkins: u64,
    /// Leases taken back from a session that died (panicked, was killed or stopped).
    pub reclaims: u64,
    /// Leases that ended with the connection broken.
    pub discards: u64,
    /// Resets that failed or overran `reset_timeout` (the connection was then closed).
    pub reset_failures: u64,
    /// Checkouts that gave up after `acquire_timeout`.
    pub timeouts: u64,
    /// Leak warnings logged (one per lease at most).
    pub leak_warnings: u64,
    /// Sessions stopped for outliving `max_session_lifetime`.
    pub sessions_stopped: u64,
    /// Health checks and keepalives sent to idle connections.
    pub checks: u64,
    /// Actors of ended sessions kept for new ones (see `PoolBuilder::spare_sessions`).
    pub spare_sessions: usize,
}
