//! The pool's metrics through the `metrics` facade: whatever recorder the application installs
//! (a Prometheus exporter, StatsD, …) gets them; without one they cost a branch. Handles are made
//! when the pool starts: install the recorder first.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `actor_orm_pool_connections` | gauge | `pool`, `state` = `open`, `idle`, `in_use`, `waiting` |
//! | `actor_orm_pool_checkouts_total`, `…_timeouts_total`, `…_reclaims_total`, `…_discards_total`, `…_reset_failures_total` | counter | `pool` |
//! | `actor_orm_pool_acquire_seconds` (wait for a connection), `actor_orm_pool_lease_seconds` (held) | histogram | `pool` |
//!
//! Gauges are set at every tick of the pool (at least once a second) and whenever
//! [`Pool::stats`](crate::Pool::stats) is asked.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

pub(crate) struct PoolMetrics {
    open: Gauge,
    idle: Gauge,
    in_use: Gauge,
    waiting: Gauge,
    pub(crate) checkouts: Counter,
    pub(crate) timeouts: Counter,
    pub(crate) reclaims: Counter,
    pub(crate) discards: Counter,
    pub(crate) reset_failures: Counter,
    acquire: Histogram,
    lease: Histogram,
}

impl PoolMetrics {
    /// Handles for the pool named `pool` (its `application_name`).
    pub(crate) fn new(pool: &str) -> Self {
        let pool = pool.to_owned();
        let gauge = |state: &'static str| metrics::gauge!("actor_orm_pool_connections", "pool" => pool.clone(), "state" => state);
        PoolMetrics {
            open: gauge("open"),
            idle: gauge("idle"),
            in_use: gauge("in_use"),
            waiting: gauge("waiting"),
            checkouts: metrics::counter!("actor_orm_pool_checkouts_total", "pool" => pool.clone()),
            timeouts: metrics::counter!("actor_orm_pool_timeouts_total", "pool" => pool.clone()),
            reclaims: metrics::counter!("actor_orm_pool_reclaims_total", "pool" => pool.clone()),
            discards: metrics::counter!("actor_orm_pool_discards_total", "pool" => pool.clone()),
            reset_failures: metrics::counter!(
                "actor_orm_pool_reset_failures_total",
                "pool" => pool.clone()
            ),
            acquire: metrics::histogram!("actor_orm_pool_acquire_seconds", "pool" => pool.clone()),
            lease: metrics::histogram!("actor_orm_pool_lease_seconds", "pool" => pool),
        }
    }

    /// Sets the gauges.
    pub(crate) fn gauges(&self, open: usize, idle: usize, in_use: usize, waiting: usize) {
        #[allow(clippy::cast_precision_loss)]
        for (g, n) in [
            (&self.open, open),
            (&self.idle, idle),
            (&self.in_use, in_use),
            (&self.waiting, waiting),
        ] {
            g.set(n as f64);
        }
    }

    pub(crate) fn acquired(&self, waited: Duration) {
        self.checkouts.increment(1);
        self.acquire.record(waited.as_secs_f64());
    }

    pub(crate) fn released(&self, held: Duration) {
        self.lease.record(held.as_secs_f64());
    }
}
