//! [`Pool::transaction`]: a unit of work in a transaction of its own, run again from the start
//! when it lost a race (a stale row, a serialization failure or a deadlock).

use std::future::Future;
use std::panic::Location;
use std::time::Duration;

use actor_orm_core::{Isolation, Result};

use crate::pool::Pool;
use crate::session::Session;

/// How [`Pool::transaction_with`] runs a unit of work: its isolation level, and how often and
/// how patiently it tries again.
///
/// ```
/// use std::time::Duration;
/// use actor_orm_actors::TransactionOptions;
/// use actor_orm_core::Isolation;
///
/// let options = TransactionOptions::new()
///     .isolation(Isolation::Serializable)
///     .max_attempts(20)
///     .backoff(Duration::from_millis(2), Duration::from_millis(200));
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct TransactionOptions {
    isolation: Isolation,
    max_attempts: u32,
    first_backoff: Duration,
    max_backoff: Duration,
}

impl Default for TransactionOptions {
    fn default() -> Self {
        TransactionOptions {
            isolation: Isolation::ReadCommitted,
            max_attempts: 10,
            first_backoff: Duration::from_millis(2),
            max_backoff: Duration::from_millis(250),
        }
    }
}

impl TransactionOptions {
    /// READ COMMITTED, at most 10 attempts, back-off from 2 ms doubling up to 250 ms.
    pub fn new() -> Self {
        Self::default()
    }

    /// The isolation level of every attempt. Default READ COMMITTED.
    pub fn isolation(mut self, isolation: Isolation) -> Self {
        self.isolation = isolation;
        self
    }

    /// How many times the work runs at most (at least once). Default 10.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The wait before the second attempt, doubling before each later one up to `max`; each wait
    /// is drawn at random below that bound, so that sessions that collided do not collide again.
    /// Default 2 ms and 250 ms.
    pub fn backoff(mut self, first: Duration, max: Duration) -> Self {
        self.first_backoff = first;
        self.max_backoff = max.max(first);
        self
    }

    /// The wait after failed attempt number `attempt` (1-based): random, below the bound.
    fn wait(&self, attempt: u32) -> Duration {
        let doubled = self
            .first_backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(16));
        crate::books::random_below(doubled.min(self.max_backoff), u64::from(attempt))
    }
}

impl Pool {
    /// Runs `work` in a session of its own, inside one transaction, and commits. When the work
    /// or its commit fails with an error worth another try ([`Error::is_retryable`]: a stale row
    /// from `save`'s check, a serialization failure 40001, a deadlock 40P01), the transaction is
    /// rolled back, the session ended, and `work` runs again **from the start** in a new
    /// session, after a short random back-off: nothing read in a failed attempt survives into
    /// the next. Any other error is returned at once (after the rollback). At most 10 attempts;
    /// see [`transaction_with`](Self::transaction_with) for other settings.
    ///
    /// `work` gets the attempt's [`Session`]; a clone of it kept past the attempt is closed.
    ///
    /// ```no_run
    /// # use actor_orm_actors::Pool;
    /// # use actor_orm_core::{Model, SingleKey, Writable};
    /// # async fn demo<Account: Model + SingleKey + Writable>(pool: Pool, balance_of: fn(&mut Account) -> &mut i64) -> actor_orm_core::Result<()> {
    /// pool.transaction(|s| async move {
    ///     let mut account = s.get::<Account>(7_i64).await?.expect("exists");
    ///     *balance_of(&mut account) += 25;
    ///     s.save(account).await // a concurrent change makes this attempt stale: it runs again
    /// })
    /// .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// [`Error::is_retryable`]: actor_orm_core::Error::is_retryable
    #[track_caller]
    pub fn transaction<T, F, Fut>(&self, work: F) -> impl Future<Output = Result<T>> + Send
    where
        F: FnMut(Session) -> Fut + Send,
        Fut: Future<Output = Result<T>> + Send,
        T: Send,
    {
        self.transaction_with(TransactionOptions::default(), work)
    }

    /// [`transaction`](Self::transaction) with an isolation level and retry settings.
    #[track_caller]
    pub fn transaction_with<T, F, Fut>(
        &self,
        options: TransactionOptions,
        mut work: F,
    ) -> impl Future<Output = Result<T>> + Send
    where
        F: FnMut(Session) -> Fut + Send,
        Fut: Future<Output = Result<T>> + Send,
        T: Send,
    {
        let site = Location::caller();
        let pool = self.clone();
        async move {
            let mut attempt = 1;
            loop {
                let session = pool.spawn_session(None, site).await?;
                let result = attempt_once(&session, &options, &mut work).await;
                // Rolls back whatever the attempt left open and returns the connection.
                let _ = session.close().await;
                match result {
                    Err(e) if e.is_retryable() && attempt < options.max_attempts => {
                        tracing::debug!(attempt, error = %e, "transaction lost a race; running it again");
                        tokio::time::sleep(options.wait(attempt)).await;
                        attempt += 1;
                    }
                    done => return done,
                }
            }
        }
    }
}

async fn attempt_once<T, F, Fut>(
    session: &Session,
    options: &TransactionOptions,
    work: &mut F,
) -> Result<T>
where
    F: FnMut(Session) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    if options.isolation != Isolation::ReadCommitted {
        session.begin_with(options.isolation).await?;
    }
    let value = work(session.clone()).await?;
    session.commit().await?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_stay_below_a_doubling_bound() {
        let o =
            TransactionOptions::new().backoff(Duration::from_millis(4), Duration::from_millis(20));
        for _ in 0..100 {
            assert!(o.wait(1) < Duration::from_millis(4));
            assert!(o.wait(2) < Duration::from_millis(8));
            assert!(o.wait(3) < Duration::from_millis(16));
            assert!(o.wait(9) < Duration::from_millis(20));
            assert!(o.wait(u32::MAX) < Duration::from_millis(20));
        }
        let zero = TransactionOptions::new().backoff(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.wait(3), Duration::ZERO);
    }

    #[test]
    fn at_least_one_attempt() {
        assert_eq!(TransactionOptions::new().max_attempts(0).max_attempts, 1);
    }
}
